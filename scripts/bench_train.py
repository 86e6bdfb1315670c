"""Benchmark: training throughput against baselines measured in the same run (docs/design/architecture.md, Training).

  small   D=256, hidden 64 BT head: pairs/s of pluralign's scanned, jitted epoch vs a plain
          eager PyTorch loop of the same shapes (budget >= 3x). Skipped if torch is absent.
  seeds   8 seeds in one vmapped program vs 8 sequential single-seed runs (budget >= 3x).
  large   D=4096, hidden 512, batch 1024 BT head: achieved FLOP/s of a train step (XLA's own
          FLOP count) vs this machine's fp32 matmul rate, timed here (budget >= 90%).
  palb    PAL-B's K prompt projectors as one batched contraction vs K separate matmuls.

  python scripts/bench_train.py [small seeds large palb] [--small-batch 256]

On a machine shared with other jobs (oversubscribed cores) PyTorch's thread pool degrades
far more than XLA's: the small-head ratio is then not a comparison of the two programs.
"""

from __future__ import annotations

import argparse
import os
import time


import jax
import jax.numpy as jnp
import numpy as np

from pluralign.models import BT, BTConfig, PairBatch, PALConfig, Tables
from pluralign.models.base import Dims, TrainStep
from pluralign.train.trainer import Trainer, TrainConfig, init_params


def _data(n_items: int, dim: int, n_pairs: int, n_users: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    a = rng.integers(n_items, size=n_pairs)
    b = (a + rng.integers(1, n_items, size=n_pairs)) % n_items
    label = ((items[a] - items[b]) @ w > 0).astype(np.float32)
    batch = PairBatch(
        user=jnp.asarray(rng.integers(n_users, size=n_pairs), jnp.int32), prompt=jnp.full((n_pairs,), -1, jnp.int32),
        a=jnp.asarray(a, jnp.int32), b=jnp.asarray(b, jnp.int32), label=jnp.asarray(label),
        weight=jnp.ones((n_pairs,), jnp.float32),
    )
    return Tables(items=jnp.asarray(items), prompts=jnp.zeros((1, dim), jnp.float32)), batch, (items, a, b, label)


def _timed_epochs(trainer, state, tables, data, epochs):
    state, _ = trainer.train_epoch(state, tables, data, jnp.int32(0), None)  # compile
    jax.block_until_ready(state)
    t = time.perf_counter()
    for e in range(1, epochs + 1):
        state, _ = trainer.train_epoch(state, tables, data, jnp.int32(e), None)
    jax.block_until_ready(state)
    return time.perf_counter() - t, state


def _trainer(model_cls, config, dim, n_users, n_pairs, batch_size, n_seeds):
    graphdef, params = init_params(model_cls, config, Dims(dim, n_users), jax.random.split(jax.random.PRNGKey(0), n_seeds))
    trainer = Trainer(graphdef, TrainConfig(batch_size=batch_size, max_epochs=10, progress=False), n_pairs)
    keys = jax.vmap(lambda i: jax.random.PRNGKey(i))(jnp.arange(n_seeds))
    return trainer, trainer.init_state(params, keys)


def bench_small(dim=256, hidden=64, batch_size=256, n_pairs=200_000, epochs=3):
    tables, data, (items, a, b, label) = _data(20_000, dim, n_pairs)
    trainer, state = _trainer(BT, BTConfig(hidden=[hidden]), dim, 100, n_pairs, batch_size, 1)
    seconds, _ = _timed_epochs(trainer, state, tables, data, epochs)
    steps = epochs * trainer.steps_per_epoch
    jax_rate = steps * batch_size / seconds
    print(f"[small] pluralign BT D={dim} hidden={hidden} batch={batch_size}: {jax_rate:,.0f} pairs/s")
    try:
        import torch
    except ImportError:
        print("[small] torch not installed (pip install torch): PyTorch baseline skipped")
        return
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2 * dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    null = torch.nn.Parameter(torch.zeros(dim))
    opt = torch.optim.Adam([*net.parameters(), null], lr=3e-3)
    items_t = torch.from_numpy(items)
    a_t, b_t, y_t = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(label)
    n_steps = min(steps, 300)

    def step(i):
        idx = torch.randint(0, n_pairs, (batch_size,))
        x = null.expand(batch_size, dim)
        r_a = net(torch.cat([x, items_t[a_t[idx]]], -1))[:, 0]
        r_b = net(torch.cat([x, items_t[b_t[idx]]], -1))[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(r_a - r_b, y_t[idx])
        opt.zero_grad(); loss.backward(); opt.step()

    for i in range(10):
        step(i)
    t = time.perf_counter()
    for i in range(n_steps):
        step(i)
    torch_rate = n_steps * batch_size / (time.perf_counter() - t)
    print(f"[small] eager PyTorch {torch.__version__} same shapes ({torch.get_num_threads()} threads): {torch_rate:,.0f} pairs/s")
    print(f"[small] ratio pluralign / PyTorch: {jax_rate / torch_rate:.2f}x (budget >= 3x)")


def bench_seeds(n_seeds=8, dim=64, n_pairs=100_000, batch_size=512, epochs=3):
    tables, data, _ = _data(5_000, dim, n_pairs, n_users=1000)
    config = PALConfig(name="pal_a")
    from pluralign.models import PALA

    trainer, state = _trainer(PALA, config, dim, 1000, n_pairs, batch_size, n_seeds)
    vmapped, _ = _timed_epochs(trainer, state, tables, data, epochs)
    trainer1, state1 = _trainer(PALA, config, dim, 1000, n_pairs, batch_size, 1)
    single, _ = _timed_epochs(trainer1, state1, tables, data, epochs)
    sequential = n_seeds * single  # one compiled single-seed program, run n_seeds times
    print(f"[seeds] PAL-A D={dim}: {n_seeds} seeds vmapped {vmapped:.2f} s vs {n_seeds} sequential runs {sequential:.2f} s "
          f"({epochs} epochs each)")
    print(f"[seeds] throughput ratio vmapped / sequential: {sequential / vmapped:.2f}x (budget >= 3x)")


def _matmul_rate(m, k, n, reps=10):
    x = jnp.ones((m, k), jnp.float32)
    w = jnp.ones((k, n), jnp.float32)
    f = jax.jit(lambda x, w: x @ w)
    jax.block_until_ready(f(x, w))
    t = time.perf_counter()
    for _ in range(reps):
        out = f(x, w)
    jax.block_until_ready(out)
    return reps * 2 * m * k * n / (time.perf_counter() - t)


def bench_large(dim=4096, hidden=512, batch_size=1024, epochs=1):
    n_pairs = batch_size * 8
    tables, data, _ = _data(4 * batch_size, dim, n_pairs)
    trainer, state = _trainer(BT, BTConfig(hidden=[hidden]), dim, 100, n_pairs, batch_size, 1)
    # XLA's FLOP count of one train step (a scan's body would be counted once, not per step).
    one = jax.tree.map(lambda x: x[0], state)
    batch = jax.tree.map(lambda col: col[:batch_size], data)
    step = TrainStep(rng=one.key, step=jnp.int32(0), rows=jnp.arange(batch_size, dtype=jnp.int32))
    cost = jax.jit(trainer.train_step).lower(one.params, one.opt_state, tables, batch, step).compile().cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"] * trainer.steps_per_epoch
    seconds, _ = _timed_epochs(trainer, state, tables, data, epochs)
    rate = epochs * flops / seconds
    # Baseline: the head's dominant matmul, both responses through the item half of layer 1.
    machine = _matmul_rate(2 * batch_size, dim, hidden)
    print(f"[large] BT D={dim} hidden={hidden} batch={batch_size}: {rate / 1e9:.1f} GFLOP/s (XLA count {flops / 1e9:.1f} "
          f"GFLOP/epoch of {trainer.steps_per_epoch} steps)")
    print(f"[large] fp32 matmul [{2 * batch_size}x{dim}]@[{dim}x{hidden}] on this machine: {machine / 1e9:.1f} GFLOP/s")
    print(f"[large] ratio: {rate / machine:.0%} of matmul rate (budget >= 90%)")


def bench_palb(batch=4096, dim=1024, latent=16, k=8, reps=20):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, dim))
    g = jax.random.normal(jax.random.PRNGKey(1), (k, dim, latent))
    batched = jax.jit(lambda x, g: jnp.einsum("bD,kDd->bkd", x, g))
    separate = jax.jit(lambda x, g: jnp.stack([x @ g[i] for i in range(k)], axis=1))
    for name, f in (("one contraction", batched), (f"{k} separate matmuls", separate)):
        jax.block_until_ready(f(x, g))
        t = time.perf_counter()
        for _ in range(reps):
            out = f(x, g)
        jax.block_until_ready(out)
        print(f"[palb] K={k} prompt projectors, {name}: {(time.perf_counter() - t) / reps * 1e3:.2f} ms")


BENCHES = {"small": bench_small, "seeds": bench_seeds, "large": bench_large, "palb": bench_palb}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("benches", nargs="*", choices=[[], *BENCHES], default=list(BENCHES))
    parser.add_argument("--small-batch", type=int, default=256)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name in args.benches or list(BENCHES):
        if name == "small":
            bench_small(batch_size=args.small_batch)
        else:
            BENCHES[name]()
