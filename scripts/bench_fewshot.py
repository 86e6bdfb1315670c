"""Benchmark: few-shot adaptation of many unseen users in one batched call (docs/design/architecture.md, Training).

Budget: 1,000 unseen users x 20 shots adapted in < 2 s on CPU. Trains PAL-A briefly on
synthetic data with 1,000+ unseen-test users, then times `adapt_and_predict` (MAP
inference of every user's mixture weights, vmapped, plus scoring their query pairs)
after compilation. Baseline in the same run: the same inference as a Python loop over
users (one jitted call per user), the naive way a reference implementation does it.

Then 100,000 users in one call (`adapt_and_predict_chunked`, chunks of --chunk users):
the unseen-test users' episodes repeated up to --many-users rows (each row is adapted
independently, so the cost is that of as many distinct users), with the wall time and the
peak host (and, on a GPU, device) memory.

  python scripts/bench_fewshot.py [--users 1000] [--shots 20] [--model pal_a] [--many-users 100000] [--chunk 8192]
"""

from __future__ import annotations

import resource
import tempfile
import time

import jax
import jax.numpy as jnp

from pluralign.data import split_seen_pairs, split_users
from pluralign.data.sources import load_dataset
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate import fewshot
from pluralign.evaluate.fewshot_chunked import adapt_and_predict_chunked
from pluralign.models import PALConfig, model_class
from pluralign.models.base import Dims
from pluralign.train.batches import make_tables, padded_batch, to_batch
from pluralign.train.trainer import Trainer, TrainConfig, init_params

from bench_args import parse_args


def main():
    args = parse_args(__doc__, users=1000, shots=20, model="pal_a",
                      loop_users=(50, "users timed in the per-user loop baseline"),
                      many_users=(100_000, "users adapted in one chunked call (0: skip)"),
                      chunk=(8192, "users per chunk of the chunked call"))

    n_users = int(args.users / 0.5) + 1  # half the users unseen-test
    data = IdealPointConfig(n_users=n_users, comparisons_per_user=2 * args.shots + 10)
    with tempfile.TemporaryDirectory() as cache:
        ds = load_dataset(data, cache)
    split = split_users(ds.n_users, seed=0, unseen_val_fraction=0.0, unseen_test_fraction=0.5)
    pairs = split_seen_pairs(ds.comparisons, split.seen, seed=0)
    tables = make_tables(ds)
    config = PALConfig(name=args.model)
    graphdef, params = init_params(model_class(args.model), config, Dims(ds.dim, ds.n_users), jax.random.PRNGKey(0)[None])
    trainer = Trainer(graphdef, TrainConfig(max_epochs=3, progress=False), len(pairs.train))
    state, _ = trainer.fit(trainer.init_state(params, jax.random.PRNGKey(1)[None]), tables,
                           to_batch(ds.comparisons.take(pairs.train)), to_batch(ds.comparisons.take(pairs.val)))
    params = jax.tree.map(lambda x: x[0], state.best_params)

    users = split.unseen_test[: args.users]
    episodes = fewshot.make_episodes(ds.comparisons, users, max_shots=args.shots, mode="random", seed=0)
    support = padded_batch(ds.comparisons, episodes.pool)
    query = padded_batch(ds.comparisons, episodes.query)
    adapt = fewshot.make_adapt_and_predict(graphdef, steps=100, learning_rate=0.1)
    seen = jnp.asarray(split.seen)
    call = lambda s, q: adapt(params, tables, s, jnp.int32(args.shots), q, jnp.float32(1.0), seen)

    t = time.perf_counter(); jax.block_until_ready(call(support, query)); compile_s = time.perf_counter() - t
    times = []
    for _ in range(5):
        t = time.perf_counter(); jax.block_until_ready(call(support, query)); times.append(time.perf_counter() - t)
    batched = min(times)

    # Baseline: one call per user (shapes [1, k]), compiled once, looped in Python.
    one = lambda batch, i: jax.tree.map(lambda x: x[i : i + 1], batch)
    jax.block_until_ready(call(one(support, 0), one(query, 0)))
    n_loop = min(args.loop_users, len(users))
    t = time.perf_counter()
    for i in range(n_loop):
        jax.block_until_ready(call(one(support, i), one(query, i)))
    loop_per_user = (time.perf_counter() - t) / n_loop

    print(f"device: {jax.devices()[0].device_kind}  model: {args.model}  users: {len(users)}  shots: {args.shots}")
    print(f"batched adapt+predict: {batched:.3f} s for {len(users)} users (compile {compile_s:.2f} s)  budget < 2 s: "
          f"{'OK' if batched < 2.0 else 'MISSED'}")
    print(f"per-user loop baseline: {loop_per_user * 1e3:.2f} ms/user -> {loop_per_user * len(users):.2f} s for {len(users)} users")
    print(f"ratio (loop / batched): {loop_per_user * len(users) / batched:.1f}x")
    if args.many_users:
        many(args, call, adapt, params, tables, seen, support, query)


def many(args, call, adapt, params, tables, seen, support, query):
    repeat = jnp.arange(args.many_users) % support.label.shape[0]
    support, query = (jax.tree.map(lambda x: x[repeat], b) for b in (support, query))
    run = lambda: adapt_and_predict_chunked(adapt, params, tables, support, args.shots, query, 1.0, seen,
                                            chunk_users=args.chunk)
    small = jax.tree.map(lambda x: x[: args.chunk], support), jax.tree.map(lambda x: x[: args.chunk], query)
    jax.block_until_ready(call(*small))  # compile the chunk shape
    t = time.perf_counter()
    states, logits = run()
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    stats = jax.devices()[0].memory_stats() or {}
    device = f", device peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB" if "peak_bytes_in_use" in stats else ""
    print(f"chunked adapt+predict: {args.many_users:,} users x {args.shots} shots in {seconds:.2f} s "
          f"({args.many_users / seconds:,.0f} users/s, chunks of {args.chunk}); states {states.shape}, "
          f"query logits {logits.shape}; peak host RSS {rss:.2f} GiB{device}")


if __name__ == "__main__":
    main()
