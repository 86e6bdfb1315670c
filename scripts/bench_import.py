"""Benchmark: importing a ratings table of 100k ratings from 1,000 users (issue 6).

    python scripts/bench_import.py [--ratings 100000] [--users 1000] [--items 5000]

Writes a synthetic ratings table (string user ids, 1-5 star ratings) to Parquet and
times `pluralign.data.importers.import_ratings` from the file: (1) items as ids into
a precomputed feature matrix, all within-user pairs; (2) the same, capped at 200
pairs per user; (3) items as texts embedded with the offline wordllama encoder.
Also times the CSV reader and writing the result with `write_dataset`.
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pluralign.data import write_dataset
from pluralign.data.importers import import_ratings

from bench_args import parse_args


def main() -> None:
    args = parse_args(__doc__, ratings=100_000, users=1_000, items=5_000, dim=256)

    rng = np.random.default_rng(0)
    users = rng.integers(args.users, size=args.ratings)
    items = rng.integers(args.items, size=args.ratings)
    ratings = rng.integers(1, 6, size=args.ratings)
    words = np.array("good bad helpful short long polite rude clear vague kind".split())
    item_texts = [" ".join(words[rng.integers(10, size=8)]) + f" #{i}" for i in range(args.items)]
    features = rng.standard_normal((args.items, args.dim)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        table = pa.table({"user": [f"user-{u}" for u in users], "item": items, "rating": ratings,
                          "item_text": [item_texts[i] for i in items]})
        pq.write_table(table, tmp / "ratings.parquet")
        pcsv.write_csv(table, tmp / "ratings.csv")
        np.save(tmp / "features.npy", features)
        print(f"ratings table: {args.ratings:,} ratings, {len(np.unique(users)):,} users, "
              f"{len(np.unique(items)):,} items")

        def timed(label, **kw):
            t0 = time.perf_counter()
            ds = import_ratings(kw.pop("path", tmp / "ratings.parquet"), **kw)
            dt = time.perf_counter() - t0
            print(f"{label:<58} {dt:6.2f} s  -> {len(ds.comparisons):>9,} comparisons, "
                  f"{ds.n_users:,} users, {ds.n_items:,} items")
            return ds

        ds = timed("ids + feature matrix, all within-user pairs (parquet)", items=tmp / "features.npy")
        timed("ids + feature matrix, all within-user pairs (csv)", path=tmp / "ratings.csv",
              items=tmp / "features.npy")
        timed("ids + feature matrix, <= 200 pairs per user", items=tmp / "features.npy", max_pairs_per_user=200)
        timed("ids + feature matrix, ties soft-labelled 0.5", items=tmp / "features.npy", ties="soft")
        timed("texts embedded with wordllama, <= 200 pairs per user", item="item_text", max_pairs_per_user=200)
        t0 = time.perf_counter()
        write_dataset(tmp / "ds", ds.items, ds.comparisons, meta=ds.meta)
        print(f"{'write_dataset of the all-pairs import':<58} {time.perf_counter() - t0:6.2f} s")


if __name__ == "__main__":
    main()
