"""Embedding tables larger than the device budget: gathered on the host, with prefetch (docs/design/architecture.md, Training).

When the item and prompt tables exceed `train.device_table_budget_mb`, `pluralign.run`
leaves them where `pluralign.data` put them (memory-mapped `.npy` files) and trains with
`HostGatherTrainer`. Each step needs only its own rows: a background thread gathers the
next `steps_per_dispatch` steps' rows of every seed into small per-step tables
(double-buffered: gathering chunk c+1 overlaps the device's work on chunk c), and the
jitted step reads them through the same `base.gather` as the on-device path, with the
batch's indices renumbered into the small tables. The epoch's order, step keys and
schedules are those of `Trainer`, so both paths train the same parameters.

Validation and evaluation read only the rows their comparisons reference (`restrict`),
placed on the device once; those subsets are assumed to fit (a validation/test/unseen
split references far fewer rows than training does).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from pluralign.data import Comparisons
from pluralign.models import base
from pluralign.train import distributed
from pluralign.train.trainer import Trainer, TrainConfig


@struct.dataclass
class HostTables:
    """Item / prompt tables kept in host memory (often memory-mapped); no JAX leaves, so the
    trainer's tree utilities (replication over a mesh) pass it through untouched."""

    items: np.ndarray = struct.field(pytree_node=False)  # [n_items, D] float16 | float32
    prompts: np.ndarray = struct.field(pytree_node=False)  # [max(n_prompts, 1), D]

    @property
    def nbytes(self) -> int:
        return int(self.items.nbytes + self.prompts.nbytes)


def table_bytes(dataset) -> int:
    prompts = dataset.prompts.nbytes if dataset.prompts is not None else 0
    return int(dataset.items.nbytes + prompts)


def host_tables(dataset) -> HostTables:
    """The dataset's tables as they are on the host (no copy of a memory-mapped file)."""
    items = dataset.items
    prompts = dataset.prompts if dataset.prompts is not None else np.zeros((1, dataset.dim), items.dtype)
    return HostTables(items=items, prompts=prompts)


def step_rows(tables: HostTables, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Host gather of one or more batches ([..., B] index columns): (items [..., 2B, D],
    prompts [..., B, D], the batch renumbered into them). Rows 2i and 2i+1 are comparison
    i's responses a and b, row i of prompts its prompt, so a shard of the batch's rows is
    a shard of its tables' rows."""
    a, b, prompt = batch["a"], batch["b"], batch["prompt"]
    pair_rows = np.stack([a, b], axis=-1).reshape(*a.shape[:-1], 2 * a.shape[-1])  # [..., 2B]
    items = np.take(tables.items, pair_rows, axis=0)
    prompts = np.take(tables.prompts, np.maximum(prompt, 0), axis=0)
    position = np.broadcast_to(np.arange(a.shape[-1], dtype=np.int32), a.shape)
    renumbered = {
        **batch,
        "a": 2 * position, "b": 2 * position + 1,
        "prompt": np.where(prompt >= 0, position, -1).astype(np.int32),
    }
    return items, prompts, renumbered


def restrict(tables: HostTables, comparisons: Comparisons, rows: np.ndarray) -> tuple[base.Tables, Comparisons]:
    """Device tables holding only the rows that `comparisons[rows]` reference, and the
    comparisons with those rows' indices renumbered into them (other rows' indices become 0
    and must not be read through the returned tables)."""
    rows = np.asarray(rows)
    used_items = np.unique(np.concatenate([comparisons.a[rows], comparisons.b[rows]]))
    used_prompts = np.unique(comparisons.prompt[rows][comparisons.prompt[rows] >= 0])
    item_map = np.zeros(len(tables.items), np.int32)
    item_map[used_items] = np.arange(len(used_items), dtype=np.int32)
    prompt_map = np.zeros(len(tables.prompts), np.int32)
    prompt_map[used_prompts] = np.arange(len(used_prompts), dtype=np.int32)
    prompt = np.where(comparisons.prompt >= 0, prompt_map[np.maximum(comparisons.prompt, 0)], -1).astype(np.int32)
    renumbered = dataclasses.replace(
        comparisons, a=item_map[comparisons.a], b=item_map[comparisons.b], prompt=prompt
    )
    prompts = tables.prompts[used_prompts] if len(used_prompts) else tables.prompts[:1]
    return base.Tables(items=jnp.asarray(tables.items[used_items]), prompts=jnp.asarray(prompts)), renumbered


def restrict_batch(tables: HostTables, data: base.PairBatch) -> tuple[base.Tables, base.PairBatch]:
    """`restrict` for a device batch (the trainer's validation pairs)."""
    cols = {f: np.asarray(getattr(data, f)) for f in ("user", "prompt", "a", "b", "label", "weight")}
    device_tables, renumbered = restrict(tables, Comparisons(**cols), np.arange(len(cols["a"])))
    return device_tables, data.replace(a=jnp.asarray(renumbered.a), b=jnp.asarray(renumbered.b),
                                       prompt=jnp.asarray(renumbered.prompt))


class HostGatherTrainer(Trainer):
    """`Trainer` whose epochs gather embedding rows on the host (`HostTables`), with prefetch.

    Same epoch order, step keys and optimiser as `Trainer`; `fit`, checkpoints, early stopping
    and logging are inherited. Models with a `training_context` (VPL, MRM: they read other
    comparisons inside the step) need the whole table on the device and are refused.
    """

    def __init__(self, graphdef, config: TrainConfig, n_train: int, steps_per_dispatch: int = 8, frozen: tuple = ()):
        super().__init__(graphdef, config, n_train, frozen)
        self.steps_per_dispatch = max(1, min(steps_per_dispatch, self.steps_per_epoch))
        self._orders = jax.jit(
            lambda keys, epoch, n: jax.vmap(lambda key: self._epoch_order(key, epoch, n))(keys), static_argnums=2
        )
        self._chunk = jax.jit(jax.vmap(self._train_chunk, in_axes=(0, 0, 0, 0, 0, None, None)), donate_argnums=0)
        self._validate_on_device = self.validate
        self.train_epoch, self.validate = self._host_epoch, self._host_validate
        self._val_cache: tuple | None = None

    def _epoch_order(self, key, epoch, n: int):
        """[steps, B] rows of each step among n training pairs, exactly as `Trainer._train_epoch` draws them."""
        order_key, _ = jax.random.split(jax.random.fold_in(key, epoch))
        order = jax.random.permutation(order_key, n)
        return order[: self.steps_per_epoch * self.batch_size].reshape(self.steps_per_epoch, self.batch_size)

    def _train_chunk(self, state, items, prompts, batch: base.PairBatch, rows, epoch, first_step):
        """Steps first_step.. of one seed on host-gathered tables (mirrors `Trainer._train_epoch`);
        rows: [K, B] the steps' training rows."""
        _, step_key = jax.random.split(jax.random.fold_in(state.key, epoch))

        def step(carry, xs):
            step_items, step_prompts, step_batch, step_rows, step_index = xs
            if self.mesh is not None:
                step_batch = jax.lax.with_sharding_constraint(step_batch, NamedSharding(self.mesh, PartitionSpec("data")))
            tables = base.Tables(items=step_items, prompts=step_prompts)
            this_step = base.TrainStep(rng=jax.random.fold_in(step_key, step_index),
                                       step=epoch * self.steps_per_epoch + step_index, rows=step_rows)
            params, opt_state, metrics = self.train_step(*carry, tables, step_batch, this_step)
            return (params, opt_state), metrics

        steps = first_step + jnp.arange(items.shape[0])
        (params, opt_state), metrics = jax.lax.scan(step, (state.params, state.opt_state), (items, prompts, batch, rows, steps))
        return state.replace(params=params, opt_state=opt_state), metrics

    def _gather_chunk(self, tables: HostTables, cols: dict, orders: np.ndarray, steps: range):
        """Host work for one dispatch: every seed's rows of these steps, gathered and sent."""
        idx = orders[:, steps.start:steps.stop]  # [S, K, B]
        batch = {name: col[idx] for name, col in cols.items()}
        items, prompts, batch = step_rows(tables, batch)
        xs = (items, prompts, base.PairBatch(**batch), idx.astype(np.int32))
        return distributed.replicate(xs, self.mesh) if self.mesh is not None else jax.device_put(xs)

    def _host_epoch(self, state, tables: HostTables, data: base.PairBatch, epoch, context=None):
        if not isinstance(tables, HostTables):
            raise TypeError("HostGatherTrainer trains on HostTables; use Trainer for tables on the device")
        if context is not None:
            raise ValueError("host-gathered tables do not support models with a training_context (VPL, MRM): "
                             "they read other comparisons' embeddings inside the step")
        cols = {f: np.asarray(getattr(data, f)) for f in ("user", "prompt", "a", "b", "label", "weight")}
        orders = np.asarray(self._orders(state.key, epoch, len(cols["label"])))  # [S, steps, B]
        K = self.steps_per_dispatch
        chunks = [range(i, min(i + K, self.steps_per_epoch)) for i in range(0, self.steps_per_epoch, K)]
        metrics = []
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._gather_chunk, tables, cols, orders, chunks[0])
            for c, steps in enumerate(chunks):
                xs = pending.result()
                if c + 1 < len(chunks):  # gather the next chunk while the device runs this one
                    pending = pool.submit(self._gather_chunk, tables, cols, orders, chunks[c + 1])
                state, chunk_metrics = self._chunk(state, *xs, epoch, jnp.int32(steps.start))
                metrics.append(chunk_metrics)
        per_step = jax.tree.map(lambda *m: jnp.concatenate(m, axis=1), *metrics)  # [S, steps]
        return state, jax.tree.map(lambda m: m.mean(axis=1), per_step)

    def _host_validate(self, state, tables: HostTables, data: base.PairBatch, epoch, context=None):
        if self._val_cache is None or self._val_cache[0] is not data:  # restricted once per fit
            self._val_cache = (data, *distributed.replicate(restrict_batch(tables, data), self.mesh))
        _, val_tables, val_data = self._val_cache
        return self._validate_on_device(state, val_tables, val_data, epoch, context)


def make_trainer(graphdef, config: TrainConfig, n_train: int, tables, frozen: tuple = ()) -> Trainer:
    """The trainer for these tables: on-device gather, or host gather for `HostTables`; `frozen`:
    state path prefixes the optimiser never updates (`make_optimizer`)."""
    if isinstance(tables, HostTables):
        return HostGatherTrainer(graphdef, config, n_train, steps_per_dispatch=config.host_steps_per_dispatch, frozen=frozen)
    return Trainer(graphdef, config, n_train, frozen)
