"""Benchmark: PersonalizedReward throughput and online-user update latency on CPU (issue 8).

    python scripts/bench_reward.py [--models bt pal_b vpl] [--dims 256 4096] [--responses 1024]

For each model and embedding size D, builds a model (random θ: speed does not depend on
training), writes it as an artifact and loads it with `pluralign.load`, then measures
  - reward throughput: responses/s of `reward(prompt, responses [N, D], user)` for a seen
    user, jitted (warm), against the same model's `reward` called eagerly (op by op, no
    jit) in the same run — the baseline ratio;
  - online update latency: ms per `OnlineUser.add` (one new comparison -> the user's state
    re-inferred on the padded buffer), median over 20 comparisons, and ms per
    `next_question` over 256 candidate pairs (posterior samples + BALD).
Prints one line per figure; ratios are taken within this run on this machine.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pluralign
from pluralign.export import OnlineUser, save_model
from pluralign.config import model_config
from pluralign.models import REGISTRY, base
from pluralign.train.trainer import init_params

from bench_args import parse_args


def build(name: str, dim: int, root: str, n_users: int = 100):
    cls, _ = REGISTRY[name]
    config = model_config(name)
    dims = base.Dims(dim=dim, n_users=n_users)
    graphdef, params = init_params(cls, config, dims, jax.random.PRNGKey(0)[None])  # one seed
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params))
    states = model.user_table_state(jnp.arange(n_users))[None]
    path = os.path.join(root, f"{name}-{dim}")
    save_model(path, model_config=config, dims=dims, params=params, seen_states=states, seeds=[0],
               dataset_meta={"name": "bench", "n_users": n_users}, seen_users=np.arange(n_users))
    return pluralign.load(path)


def timed(fn, repeats: int) -> float:
    """Best-of-`repeats` seconds of fn() (which must block): the least disturbed by other
    processes on a shared machine, for both sides of every ratio."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def main() -> None:
    args = parse_args(__doc__, models=["bt", "pal_b", "vpl"], dims=[256, 4096],
                      responses=([16, 1024], "responses per call"), repeats=10)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores visible")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        for dim, N in [(d, n) for d in args.dims for n in args.responses]:
            prompt = jnp.asarray(rng.normal(size=dim), jnp.float32)
            responses = jnp.asarray(rng.normal(size=(N, dim)), jnp.float32)
            for name in args.models:
                trained = build(name, dim, root)
                reward = trained.reward()
                user = 0
                if not reward.has_scalar_reward:  # GPM: the N×N preference matrix instead (one call)
                    reward.preference_matrix(prompt, responses, user).block_until_ready()
                    t = timed(lambda: reward.preference_matrix(prompt, responses, user).block_until_ready(), args.repeats)
                    print(f"{name:12s} D={dim:5d} N={N:5d}: preference matrix {N / t:12,.0f} responses/s "
                          f"({N * N / t:,.0f} pairs/s, {t * 1e3:.2f} ms per call)")
                    continue
                reward(prompt, responses, user).block_until_ready()  # compile
                jitted = timed(lambda: reward(prompt, responses, user).block_until_ready(), args.repeats)
                model, state = trained.model, trained.seen_states[user]

                def eager():
                    model.reward(jnp.broadcast_to(state, (N, state.shape[0])), jnp.broadcast_to(prompt, (N, dim)),
                                 jnp.ones((N,), bool), responses).block_until_ready()

                eager()
                eager_s = timed(eager, args.repeats)
                print(f"{name:12s} D={dim:5d} N={N:5d}: reward {N / jitted:12,.0f} responses/s jitted "
                      f"({jitted * 1e3:.2f} ms per call of {N}); eager {N / eager_s:12,.0f} responses/s; "
                      f"ratio {eager_s / jitted:.1f}x")
        for name in args.models:
            trained = build(name, args.dims[0], root)
            reward = trained.reward()
            if reward.state_dim == 0:
                print(f"{name:12s} online: no user state (nothing to update)")
                continue
            dim = args.dims[0]
            items = rng.normal(size=(64, dim)).astype(np.float32)
            online = OnlineUser(reward)
            online.add(items[0], items[1])  # compile
            latencies = []
            for i in range(20):
                t0 = time.perf_counter()
                online.add(items[2 + i], items[30 + i], label=float(i % 2)).block_until_ready()
                latencies.append(time.perf_counter() - t0)
            cand_a = rng.normal(size=(256, dim)).astype(np.float32)
            cand_b = rng.normal(size=(256, dim)).astype(np.float32)
            online.next_question(cand_a, cand_b)  # compile
            question = timed(lambda: online.next_question(cand_a, cand_b), 10)
            print(f"{name:12s} online D={dim}: update {np.median(latencies) * 1e3:.2f} ms per comparison "
                  f"(median of 20, p90 {np.percentile(latencies, 90) * 1e3:.2f} ms; buffer {online.capacity}, "
                  f"{reward.inference_steps} inference steps); next_question over 256 pairs {question * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
