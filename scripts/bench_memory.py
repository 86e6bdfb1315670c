"""Benchmark: peak host memory of training at scale (docs/design/architecture.md, Training).

Budget: 1M users, 10M comparisons and 100k items at D = 1024 (float16 table) train with
peak memory < 8 GB. A random dataset of that size is written in a child process (so its
generation does not count), then this process reads it (memory-mapped), splits users and
pairs, and trains PAL-A for one epoch with validation, reporting peak RSS. Baseline in
the same run: the size of the data itself (item table + comparison columns), so the ratio
says how many copies of the data training holds.

  python scripts/bench_memory.py [--users 1000000] [--pairs 10000000] [--items 100000] [--dim 1024]
"""

from __future__ import annotations

import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from bench_args import parse_args


def write(path, n_users, n_pairs, n_items, dim):
    import numpy as np

    from pluralign.data import Comparisons, write_dataset

    rng = np.random.default_rng(0)
    items = rng.standard_normal((n_items, dim), dtype=np.float32).astype(np.float16)
    user = np.concatenate([np.arange(n_users), rng.integers(n_users, size=n_pairs - n_users)]).astype(np.int32)
    a = rng.integers(n_items, size=n_pairs, dtype=np.int32)
    b = ((a + rng.integers(1, n_items, size=n_pairs, dtype=np.int32)) % n_items).astype(np.int32)
    label = rng.integers(2, size=n_pairs).astype(np.float32)
    write_dataset(path, items, Comparisons.from_arrays(user=user, a=a, b=b, label=label), meta={"name": "bench_memory"})


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def main():
    args = parse_args(__doc__, users=1_000_000, pairs=10_000_000, items=100_000, dim=1024,
                      write_only=(None, "internal: only write the dataset to this path (run in a child process)"))
    if args.write_only:
        write(args.write_only, args.users, args.pairs, args.items, args.dim)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "ds"
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write-only", str(path), "--users", str(args.users), "--pairs",
                        str(args.pairs), "--items", str(args.items), "--dim", str(args.dim)], check=True)
        print(f"wrote dataset in {time.perf_counter() - t:.1f} s")

        import jax

        from pluralign.data import read_dataset, split_seen_pairs, split_users
        from pluralign.models import PALA, PALConfig
        from pluralign.models.base import Dims
        from pluralign.train.batches import make_tables, to_batch
        from pluralign.train.trainer import Trainer, TrainConfig, init_params

        t = time.perf_counter()
        ds = read_dataset(path)
        split = split_users(ds.n_users, seed=0)
        pairs = split_seen_pairs(ds.comparisons, split.seen, seed=0)
        tables = make_tables(ds)
        train, val = to_batch(ds.comparisons.take(pairs.train)), to_batch(ds.comparisons.take(pairs.val))
        print(f"read + validate + split + to device in {time.perf_counter() - t:.1f} s; peak RSS so far {peak_rss_gb():.2f} GB")

        graphdef, params = init_params(PALA, PALConfig(name="pal_a"), Dims(ds.dim, ds.n_users), jax.random.PRNGKey(0)[None])
        trainer = Trainer(graphdef, TrainConfig(batch_size=4096, max_epochs=1, progress=False), len(pairs.train))
        t = time.perf_counter()
        state, _ = trainer.fit(trainer.init_state(params, jax.random.PRNGKey(1)[None]), tables, train, val)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t
        data_gb = (ds.items.nbytes + 6 * 4 * len(ds.comparisons)) / 1024**3
        peak = peak_rss_gb()
        print(f"trained 1 epoch ({len(pairs.train):,} pairs) + validation ({len(pairs.val):,}) in {seconds:.1f} s "
              f"= {len(pairs.train) / seconds:,.0f} pairs/s")
        print(f"data size {data_gb:.2f} GB; peak RSS {peak:.2f} GB ({peak / data_gb:.1f}x the data); budget < 8 GB: "
              f"{'OK' if peak < 8 else 'MISSED'}")


if __name__ == "__main__":
    main()
