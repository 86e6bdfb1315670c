"""Training: one jitted program that trains every seed of a run at once.

The per-seed step is written for one replica and lifted with `jax.vmap`, so a run
with seeds [0, 1, 2] is one compiled program (docs/design/architecture.md, Training). An epoch is one dispatch:
a `lax.scan` over its batches, each batch a row of a permutation drawn from
`fold_in(seed_key, epoch)`; the embedding tables are gathered inside the step.
After every `eval_every` epochs the seen-user validation loss decides early stopping
(per seed: a seed keeps its best parameters and stops improving them after
`patience` evaluations without progress) and the whole training state is saved with
orbax. Training depends only on (state, epoch), so a run killed and restarted from
its latest checkpoint ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pluralign.checkpoint_io import abstract, checkpoint_manager, restore_latest, save_step
from pluralign.models import base
from pluralign.numerics import optimizer_update
from pluralign.train import distributed
from pluralign.train.tracking import Trackers

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 3e-3  # peak learning rate of the schedule
    weight_decay: float = 0.0  # adamw only
    schedule: str = "cosine"  # constant | cosine (to 5% over the whole run) | warmup_cosine
    warmup_steps: int = 100  # warmup_cosine only
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # Comparisons per optimiser step. null = auto_batch_size(n_train): an epoch of at least
    # ~50 steps (n_train // 50 rounded down to a power of two, within [16, 512]), so small
    # data sets are not trained in a handful of steps; a number is used as given.
    batch_size: Optional[int] = None
    max_epochs: int = 60  # passes over the seen users' training pairs
    eval_every: int = 1  # epochs between validations (and checkpoints)
    patience: int = 8  # validations without improvement before a seed stops ...
    # ... and at least this many optimiser steps since its best validation: patience measured
    # in training done, not in epochs (which may be a few steps each on small data).
    patience_steps: int = 1000
    checkpoint: bool = True  # orbax checkpoint at every validation; a restarted run resumes
    progress: bool = True  # rich progress bar
    tensorboard: bool = True  # TensorBoard event files in <run>/tensorboard/ (pluralign.train.tracking)
    wandb: bool = False  # also log to Weights & Biases (pip install "pluralign[wandb]"; WANDB_MODE=offline works)
    # Data parallelism over all local devices (Mesh + NamedSharding): each batch is split
    # along its rows, parameters are replicated, XLA inserts the gradient all-reduce.
    # "auto" = on when more than one device is visible.
    data_parallel: str = "auto"  # auto | on | off
    # MRM (pluralign.train.meta), for models whose user state is fitted: a meta-learned initial
    # user state, trained by `meta_inner_steps` gradient steps of size `meta_inner_learning_rate`
    # on `meta_support_size` of the user's other training pairs, then the loss on the query pair;
    # users' adapted losses above the (1 − robust_ratio) batch quantile weigh up to 2×, over a
    # sigmoid of width robust_smoothing (robust_ratio = 0: plain MAML). Few-shot inference starts there.
    meta: bool = False
    meta_inner_steps: int = 3  # MRM: gradient steps on the user state from the meta-learned init, per support set
    meta_inner_learning_rate: float = 0.5  # MRM: step size of those inner steps
    meta_support_size: int = 8  # MRM: the user's other training pairs drawn as the inner loop's support
    robust_ratio: float = 0.2  # MRM: the hardest fraction of each batch's users, weighted up to 2x (0 = plain MAML)
    robust_smoothing: float = 0.1  # MRM: width of the sigmoid that weighs users around that quantile
    # Join a multi-process / multi-host job (pluralign.train.distributed): "auto" = when the
    # environment describes one (JAX_COORDINATOR_ADDRESS, or a Slurm step with several tasks).
    distributed: str = "auto"  # auto | on | off
    # Item + prompt tables larger than this many MB stay in host memory (memory-mapped) and each
    # step's rows are gathered there with prefetch (pluralign.train.host_tables); None = no limit.
    device_table_budget_mb: Optional[float] = None
    host_steps_per_dispatch: int = 8  # host-gather path: steps gathered and run per dispatch
    # Precision of float32 matmuls in training (jax.default_matmul_precision): "default" is the
    # backend's (exact fp32 on CPU; TF32 on recent NVIDIA GPUs), "highest" forces fp32
    # everywhere, "bfloat16" one bf16 pass (fastest on GPU/TPU, least exact).
    matmul_precision: str = "default"  # default | high | highest | bfloat16 | tensorfloat32 | float32

    def __post_init__(self):
        # Fail at start-up, not after the data has loaded.
        choices = {"optimizer": ("adam", "adamw", "sgd"), "schedule": ("constant", "cosine", "warmup_cosine"),
                   "data_parallel": ("auto", "on", "off"), "distributed": distributed.MODES,
                   "matmul_precision": ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"train.{field} must be one of {list(allowed)}, got {getattr(self, field)!r}")
        for field in ("batch_size", "max_epochs", "eval_every", "host_steps_per_dispatch"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise ValueError(f"train.{field} must be >= 1, got {getattr(self, field)}")
        if self.meta_inner_steps < 1 or self.meta_support_size < 1 or self.meta_inner_learning_rate <= 0:
            raise ValueError("train.meta_inner_steps and train.meta_support_size must be >= 1, train.meta_inner_learning_rate > 0")
        if not 0 <= self.robust_ratio < 1 or self.robust_smoothing <= 0:
            raise ValueError(f"train.robust_ratio must be in [0, 1) and train.robust_smoothing > 0, got {self.robust_ratio}, {self.robust_smoothing}")
        if self.device_table_budget_mb is not None and self.device_table_budget_mb < 0:
            raise ValueError(f"train.device_table_budget_mb must be >= 0 or null, got {self.device_table_budget_mb}")
        if self.learning_rate < 0 or self.patience < 0 or self.patience_steps < 0:
            raise ValueError("train.learning_rate, train.patience and train.patience_steps must be >= 0")


def auto_batch_size(n_train: int, min_steps: int = 50) -> int:
    """`train.batch_size=null`: n_train // min_steps rounded down to a power of two, in [16, 512]."""
    size = min(512, max(16, n_train // min_steps))
    return 1 << (size.bit_length() - 1)


@struct.dataclass
class TrainState:
    """Everything a seed needs to continue training; one leading seed axis when vmapped."""

    params: Any
    opt_state: Any
    key: jax.Array  # raw uint32 [2] key of this seed
    best_params: Any
    best_val_loss: jax.Array
    best_epoch: jax.Array
    bad_evals: jax.Array


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning rate at each optimiser step."""
    total_steps = max(total_steps, 1)
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, total_steps, alpha=0.05)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, min(config.warmup_steps, total_steps - 1), total_steps,
            end_value=0.05 * config.learning_rate,
        )
    raise ValueError(f"unknown schedule {config.schedule!r}; use constant, cosine or warmup_cosine")


def trainable_mask(params):
    """The model state's structure with True at nnx.Param leaves, False at other variables."""
    return jax.tree.map(lambda v: v.replace(isinstance(v, nnx.Param)) if isinstance(v, nnx.Variable) else True, params,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def frozen_labels(params, frozen: tuple[tuple[str, ...], ...]):
    """The state's structure with "frozen" at the leaves under one of the `frozen` path prefixes
    and "train" elsewhere (`optax.multi_transform` labels)."""
    def label(path, leaf):
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        is_frozen = any(keys[: len(prefix)] == prefix for prefix in frozen)
        value = "frozen" if is_frozen else "train"
        return leaf.replace(value) if isinstance(leaf, nnx.Variable) else value

    return jax.tree_util.tree_map_with_path(label, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(config: TrainConfig, lr: optax.Schedule,
                   frozen: tuple[tuple[str, ...], ...] = ()) -> optax.GradientTransformation:
    """config.optimizer over the learning-rate schedule `lr` (`make_schedule`), after gradient
    clipping; the state under the `frozen` path prefixes is never updated (a population stage's
    shared reward, `pluralign.models.bt.PopulationStage`) and not counted in the clipping norm."""
    tx = _optimizer(config, lr)
    if frozen:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, lambda p: frozen_labels(p, frozen))
    return tx


def _optimizer(config: TrainConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        opt = optax.adam(lr)
    elif config.optimizer == "adamw":
        # Decay trainable parameters only: fixed state fitted before training (DPA's reward
        # transform, bt_residual's projection) is an nnx.Variable read under stop_gradient, which
        # Adam leaves alone but a decoupled decay would shrink.
        opt = optax.adamw(lr, weight_decay=config.weight_decay, mask=trainable_mask)
    elif config.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=0.9)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use adam, adamw or sgd")
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), opt) if config.grad_clip > 0 else opt


def predict_in_chunks(fn: Callable, data: base.PairBatch, chunk: int) -> Any:
    """Applies `fn(batch) -> pytree of [chunk]` over data in fixed-size chunks (bounded memory).

    Pads with weight-0 rows so every chunk has the same shape; padding is cut off after.
    """
    n = data.label.shape[0]
    chunk = max(1, min(chunk, n))
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    padded = jax.tree.map(lambda col: jnp.concatenate([col, jnp.zeros((pad,), col.dtype)]), data)
    chunks = jax.tree.map(lambda col: col.reshape(n_chunks, chunk), padded)
    out = jax.lax.map(fn, chunks)
    return jax.tree.map(lambda x: x.reshape(n_chunks * chunk, *x.shape[2:])[:n], out)


def predict_seen(graphdef, params, tables: base.Tables, data: base.PairBatch, chunk: int = 8192, *,
                 context: Any = None) -> jax.Array:
    """[N] logits of seen-user comparisons under one seed's parameters, in bounded memory
    (`context`: the model's `training_context`)."""
    model = nnx.merge(graphdef, params)
    return predict_in_chunks(lambda batch: base.seen_logits(model, tables, batch, context), data, chunk)


def evaluate_seen(graphdef, params, tables: base.Tables, data: base.PairBatch, chunk: int = 8192, *,
                  context: Any = None) -> dict:
    """Weighted log-loss and accuracy of seen-user comparisons under one seed's parameters."""
    return base.weighted_metrics(predict_seen(graphdef, params, tables, data, chunk, context=context), data.label, data.weight)


class Trainer:
    """Trains a model on seen-user comparisons for several seeds at once."""

    def __init__(self, graphdef: nnx.GraphDef, config: TrainConfig, n_train: int, frozen: tuple = ()):
        self.graphdef = graphdef
        self.config = config
        self.mesh = _data_mesh(config.data_parallel)
        n_shards = self.mesh.size if self.mesh is not None else 1
        # Every shard gets the same number of rows.
        requested = config.batch_size if config.batch_size is not None else auto_batch_size(n_train)
        self.batch_size = max(n_shards, min(requested, n_train) // n_shards * n_shards)
        self.steps_per_epoch = max(1, n_train // self.batch_size)
        self.schedule = make_schedule(config, config.max_epochs * self.steps_per_epoch)  # also logged with the metrics
        self.tx = make_optimizer(config, self.schedule, frozen)  # `frozen`: state path prefixes never updated
        # (state, tables, data, epoch, context) -> (state, metrics [n_seeds]): one dispatch each;
        # `context` is the model's `training_context` (None for most models).
        self.train_epoch = jax.jit(jax.vmap(self._train_epoch, in_axes=(0, None, None, None, None)), donate_argnums=0)
        self.validate = jax.jit(jax.vmap(self._validate_one, in_axes=(0, None, None, None, None)))

    def init_state(self, params, keys: jax.Array) -> TrainState:
        """params: seed-stacked model state; keys: raw [n_seeds, 2] keys."""
        n_seeds = keys.shape[0]
        return TrainState(
            params=params,
            opt_state=jax.vmap(self.tx.init)(params),
            key=keys,
            best_params=jax.tree.map(jnp.copy, params),  # own buffers: the epoch step donates state
            best_val_loss=jnp.full((n_seeds,), jnp.inf, jnp.float32),
            best_epoch=jnp.full((n_seeds,), -1, jnp.int32),
            bad_evals=jnp.zeros((n_seeds,), jnp.int32),
        )

    def _loss(self, params, tables, batch, step: base.TrainStep):
        return nnx.merge(self.graphdef, params).training_loss(tables, batch, step)

    def train_step(self, params, opt_state, tables: base.Tables, batch: base.PairBatch, step: base.TrainStep):
        """One optimiser step on one batch of one seed: (params, opt_state, metrics), metrics
        "objective" (what the optimiser minimised), "loss" (its preference cross-entropy part,
        as the model reports it), "grad_norm" and the model's own."""
        (objective, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(params, tables, batch, step)
        metrics = {**metrics, "objective": objective, "grad_norm": optax.global_norm(grads)}  # norm before clipping
        updates, opt_state = optimizer_update(self.tx, grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    def _train_epoch(self, state: TrainState, tables: base.Tables, data: base.PairBatch, epoch, context=None):
        n = data.label.shape[0]
        order_key, step_key = jax.random.split(jax.random.fold_in(state.key, epoch))
        order = jax.random.permutation(order_key, n)
        order = order[: self.steps_per_epoch * self.batch_size].reshape(self.steps_per_epoch, self.batch_size)

        def step(carry, xs):
            idx, step_index = xs  # idx: [B] rows of the training comparisons
            batch = jax.tree.map(lambda col: col[idx], data)
            if self.mesh is not None:
                batch = jax.lax.with_sharding_constraint(batch, NamedSharding(self.mesh, PartitionSpec("data")))
            this_step = base.TrainStep(
                rng=jax.random.fold_in(step_key, step_index),  # this step's key, for models that sample
                step=epoch * self.steps_per_epoch + step_index, rows=idx, context=context,
            )
            params, opt_state, metrics = self.train_step(*carry, tables, batch, this_step)
            return (params, opt_state), metrics

        steps = jnp.arange(self.steps_per_epoch)
        (params, opt_state), metrics = jax.lax.scan(step, (state.params, state.opt_state), (order, steps))
        return state.replace(params=params, opt_state=opt_state), jax.tree.map(jnp.mean, metrics)

    def _validate_one(self, state: TrainState, tables, data, epoch, context=None):
        metrics = evaluate_seen(self.graphdef, state.params, tables, data, context=context)
        stopped = self.stopped(state, epoch - self.config.eval_every)  # as it stood at the previous validation
        improved = (metrics["loss"] < state.best_val_loss - 1e-6) & ~stopped
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(improved, n, o), new, old)
        state = state.replace(
            best_params=keep(state.params, state.best_params),
            best_val_loss=jnp.where(improved, metrics["loss"], state.best_val_loss),
            best_epoch=jnp.where(improved, epoch, state.best_epoch),
            bad_evals=jnp.where(improved, 0, jnp.where(stopped, state.bad_evals, state.bad_evals + 1)),
        )
        return state, metrics

    def stopped(self, state: TrainState, epoch) -> jax.Array:
        """[n_seeds] whether each seed has stopped improving (early stopping) after `epoch`."""
        steps_since_best = (epoch - state.best_epoch) * self.steps_per_epoch
        return (state.bad_evals >= self.config.patience) & (steps_since_best >= self.config.patience_steps)

    def fit(
        self,
        state: TrainState,
        tables: base.Tables,
        train: base.PairBatch,
        val: base.PairBatch,
        run_dir: pathlib.Path | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
        hparams: dict | None = None,
        context: Any = None,
    ) -> tuple[TrainState, dict]:
        """Trains until every seed has stopped or max_epochs; resumes from run_dir/checkpoints.
        `context`: the model's `training_context` of `train` (None for most models)."""
        cfg = self.config
        # With several processes the jitted programs take only global arrays over the mesh.
        state, tables, train, val, context = distributed.replicate((state, tables, train, val, context), self.mesh)
        primary = distributed.is_primary()  # only process 0 writes the metrics log
        with contextlib.ExitStack() as stack:
            if cfg.matmul_precision != "default":  # traced into the compiled steps
                stack.enter_context(jax.default_matmul_precision(cfg.matmul_precision))
            manager = None
            if cfg.checkpoint and run_dir is not None:
                manager = stack.enter_context(checkpoint_manager(pathlib.Path(run_dir) / "checkpoints"))
            start_epoch, done = 0, False
            if manager is not None and manager.latest_step() is not None:
                state, last_epoch, done = _restore(manager, state, pathlib.Path(run_dir) / "checkpoints")
                start_epoch = last_epoch + 1
            log = stack.enter_context((run_dir / "metrics.jsonl").open("a")) if run_dir is not None and primary else None
            trackers = stack.enter_context(Trackers(run_dir if primary else None, tensorboard=cfg.tensorboard, wandb=cfg.wandb, config=hparams))
            progress = stack.enter_context(_progress(cfg.progress and primary))
            task = progress.add_task("train", total=cfg.max_epochs, completed=start_epoch)
            t0 = time.perf_counter()
            epoch = start_epoch - 1
            for epoch in range(start_epoch, start_epoch if done else cfg.max_epochs):
                state, train_metrics = self.train_epoch(state, tables, train, jnp.int32(epoch), context)
                progress.advance(task)
                if (epoch + 1) % cfg.eval_every and epoch + 1 < cfg.max_epochs:
                    continue
                state, val_metrics = self.validate(state, tables, val, jnp.int32(epoch), context)
                # Before the checkpoint: a diverged state must never replace the last good one.
                check_finite(epoch, train_metrics, val_metrics, manager.latest_step() if manager else None)
                all_stopped = bool(jnp.all(self.stopped(state, epoch)))
                step = (epoch + 1) * self.steps_per_epoch
                record = {
                    "epoch": epoch,
                    "step": step,
                    # the objective minimised, and its preference cross-entropy (the quantity of val_loss);
                    # they differ where a model's objective has more terms (VPL's KL, DPA's, MRM's)
                    "train_objective": np.asarray(train_metrics["objective"]).tolist(),
                    "train_bce": np.asarray(train_metrics["loss"]).tolist(),
                    "val_loss": np.asarray(val_metrics["loss"]).tolist(),
                    "val_accuracy": np.asarray(val_metrics["accuracy"]).tolist(),
                    "learning_rate": float(self.schedule(step - 1)),  # at the epoch's last step
                    "grad_norm": np.asarray(train_metrics["grad_norm"]).tolist(),  # epoch mean, before clipping
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                progress.update(task, description=f"train val_acc={np.mean(record['val_accuracy']):.3f}")
                logger.info(
                    "epoch %d (step %d): train_objective %.4f train_bce %.4f val_loss %.4f val_accuracy %.4f lr %.3g grad_norm %.3g",
                    epoch, step, *(np.mean(record[k]) for k in
                                   ("train_objective", "train_bce", "val_loss", "val_accuracy", "learning_rate", "grad_norm")),
                )
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                trackers.log(record, step)
                if manager is not None:
                    _save(manager, epoch, state, done=all_stopped or epoch + 1 == cfg.max_epochs)
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
                if all_stopped:
                    message = (f"early stopping at epoch {epoch + 1} of {cfg.max_epochs}: no seed improved its validation "
                               f"loss for {cfg.patience} validations (best epochs {(np.asarray(state.best_epoch) + 1).tolist()})")
                    progress.update(task, description=f"train: stopped early (epoch {epoch + 1})")
                    logger.info(message)
                    break
            if manager is not None:
                manager.wait_until_finished()
        state = distributed.local(state)  # evaluation runs on each process's own device
        summary = {
            "epochs_run": epoch + 1,
            "best_epoch": np.asarray(state.best_epoch).tolist(),
            "best_val_loss": np.asarray(state.best_val_loss).tolist(),
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.batch_size,
        }
        return state, summary


class TrainingDiverged(FloatingPointError):
    """The training or validation loss became NaN or infinite."""


def check_finite(epoch: int, train_metrics: dict, val_metrics: dict, last_good_epoch: int | None) -> None:
    """Stops a run whose loss is no longer finite, naming the seeds, the epoch and what was kept."""
    train_loss, val_loss = np.asarray(train_metrics["objective"]), np.asarray(val_metrics["loss"])
    bad = ~(np.isfinite(train_loss) & np.isfinite(val_loss))
    if bad.any():
        kept = (f"the checkpoint of epoch {last_good_epoch}, the last good one, is kept" if last_good_epoch is not None
                else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}: seed index {np.flatnonzero(bad).tolist()} has train loss "
            f"{train_loss.reshape(-1)[bad.reshape(-1)].tolist()}, val loss {val_loss.reshape(-1)[bad.reshape(-1)].tolist()}; "
            f"{kept}. Lower train.learning_rate or set train.grad_clip; no results were written."
        )


def _data_mesh(mode: str) -> Mesh | None:
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"train.data_parallel must be auto, on or off, not {mode!r}")
    if mode == "off" or (mode == "auto" and jax.device_count() == 1):
        return None
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _save(manager: ocp.CheckpointManager, epoch: int, state: TrainState, done: bool) -> None:
    # Leaves as a flat list: orbax then needs no knowledge of NNX/optax pytree node types,
    # and the restore target's treedef puts them back.
    payload = {"leaves": jax.tree.leaves(state), "epoch": np.asarray(epoch, np.int32), "done": np.asarray(done, np.int32)}
    save_step(manager, epoch, payload)


def restore_checkpoint(run_dir: pathlib.Path, like: TrainState) -> tuple[TrainState, int, bool]:
    """The latest saved (state, epoch, done) of a run, restored into the structure of `like`."""
    directory = pathlib.Path(run_dir) / "checkpoints"
    with checkpoint_manager(directory) as manager:
        if manager.latest_step() is None:
            raise FileNotFoundError(f"{directory}: no checkpoint to restore")
        return _restore(manager, like, directory)


def _restore(manager: ocp.CheckpointManager, like: TrainState, directory: pathlib.Path) -> tuple[TrainState, int, bool]:
    leaves, treedef = jax.tree.flatten(like)
    target = {
        "leaves": abstract(leaves),
        "epoch": np.zeros((), np.int32),
        "done": np.zeros((), np.int32),
    }
    try:
        restored = restore_latest(manager, target)
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(
            f"{directory}: the checkpoint there does not match this run's model or seeds ({e}). "
            "Resume only with the same config; start a changed config in a new run directory."
        ) from e
    state = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in restored["leaves"]])
    return state, int(restored["epoch"]), bool(restored["done"])


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not enabled, transient=False,
    )


def init_params(model_cls, config, dims: base.Dims, keys: jax.Array):
    """Builds one model per seed key; returns (graphdef, seed-stacked params)."""
    graphdef = nnx.split(nnx.eval_shape(lambda: model_cls(config, dims, rngs=nnx.Rngs(0))))[0]
    params = jax.vmap(lambda key: base.init(model_cls, config, dims, key)[1])(keys)
    return graphdef, params
