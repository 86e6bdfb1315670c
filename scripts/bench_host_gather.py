"""Benchmark: the throughput cost of keeping embedding tables on the host (docs/design/architecture.md, Training).

Trains the same BT head on the same comparisons twice in one run: with the item table on
the device (gathered inside the jitted step) and with it memory-mapped on the host
(`train.device_table_budget_mb` exceeded: `HostGatherTrainer` gathers each dispatch's rows
in a background thread, double-buffered). Prints pairs/s of both paths and their ratio,
and checks both trained the same parameters.

  python scripts/bench_host_gather.py [--items 50000] [--dim 1024] [--pairs 200000] [--batch 1024]
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from pluralign.models import BT, BTConfig, PairBatch, Tables
from pluralign.models.base import Dims
from pluralign.train.host_tables import HostGatherTrainer, HostTables
from pluralign.train.trainer import Trainer, TrainConfig, init_params

from bench_args import parse_args


def main():
    args = parse_args(__doc__, items=50_000, dim=1024, pairs=200_000, batch=1024, hidden=64, epochs=2,
                      steps_per_dispatch=8)

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "items.npy"
        np.save(path, rng.standard_normal((args.items, args.dim), dtype=np.float32).astype(np.float16))
        items = np.load(path, mmap_mode="r")  # as pluralign.data reads a dataset
        a = rng.integers(args.items, size=args.pairs).astype(np.int32)
        b = ((a + rng.integers(1, args.items, size=args.pairs)) % args.items).astype(np.int32)
        data = PairBatch(user=jnp.zeros(args.pairs, jnp.int32), prompt=jnp.full(args.pairs, -1, jnp.int32),
                         a=jnp.asarray(a), b=jnp.asarray(b), label=jnp.asarray(rng.integers(2, size=args.pairs), jnp.float32),
                         weight=jnp.ones(args.pairs, jnp.float32))
        config = TrainConfig(batch_size=args.batch, max_epochs=args.epochs + 1, progress=False, checkpoint=False)
        graphdef, params = init_params(BT, BTConfig(hidden=[args.hidden]), Dims(args.dim, 1), jax.random.PRNGKey(0)[None])
        paths = {
            "device": (Trainer(graphdef, config, args.pairs),
                       Tables(items=jnp.asarray(items), prompts=jnp.zeros((1, args.dim), jnp.float16))),
            "host": (HostGatherTrainer(graphdef, config, args.pairs, steps_per_dispatch=args.steps_per_dispatch),
                     HostTables(items=items, prompts=np.zeros((1, args.dim), np.float16))),
        }
        rates, finals = {}, {}
        for name, (trainer, tables) in paths.items():
            state = trainer.init_state(jax.tree.map(jnp.copy, params), jax.random.PRNGKey(1)[None])
            state, _ = trainer.train_epoch(state, tables, data, jnp.int32(0), None)  # compile
            jax.block_until_ready(state)
            t = time.perf_counter()
            for epoch in range(1, args.epochs + 1):
                state, _ = trainer.train_epoch(state, tables, data, jnp.int32(epoch), None)
            jax.block_until_ready(state)
            rates[name] = args.epochs * trainer.steps_per_epoch * trainer.batch_size / (time.perf_counter() - t)
            finals[name] = jax.tree.leaves(state.params)
        table_mb = items.nbytes / 2**20
        print(f"jax {jax.__version__} on {jax.devices()[0].platform}; BT D={args.dim} hidden={args.hidden} "
              f"batch={args.batch}; item table {args.items} x {args.dim} float16 = {table_mb:.0f} MB")
        print(f"[host_gather] device-table gather: {rates['device']:,.0f} pairs/s")
        print(f"[host_gather] host-table gather (memory-mapped, prefetch, {args.steps_per_dispatch} steps/dispatch): "
              f"{rates['host']:,.0f} pairs/s")
        print(f"[host_gather] ratio host / device: {rates['host'] / rates['device']:.2f}")
        diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(finals["device"], finals["host"]))
        print(f"[host_gather] max |param difference| after {args.epochs + 1} epochs: {diff:.2e}")


if __name__ == "__main__":
    main()
