"""Best-of-n reranking per user with a trained pluralign model.

    python examples/best_of_n.py [--run-dir runs/best_of_n] [--model pal_a]

Trains a small model on the built-in synthetic data (three groups of users with
different ideal points; no download, ~1 min on a laptop CPU) — or loads it if the run
directory already holds one — then, for one set of candidate responses:
  1. reranks them for one seen user of each true group (different groups, different picks);
  2. infers a brand-new user from 8 of their comparisons (few-shot, θ frozen, the same
     inference as the evaluation protocol) and reranks for them;
  3. asks a streaming user the most informative questions (expected information gain)
     and shows their pick settling as answers come in;
  4. shows the policy hook: a pure reward function usable inside a jitted policy step.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

import pluralign
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.export import OnlineUser, Support
from pluralign.models import REGISTRY
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

DATA = IdealPointConfig(n_users=150, n_items=300, comparisons_per_user=60, dim=16, latent_dim=4, n_groups=3, seed=0)


def train_or_load(run_dir: pathlib.Path, model: str):
    if not (run_dir / "model" / "model.json").exists():
        _, config_cls = REGISTRY[model]
        model_config = config_cls(name=model, n_prototypes=3, latent_dim=4) if model.startswith("pal") else config_cls(name=model)
        config = RunConfig(
            model=model_config, data=DATA, seeds=[0, 1],
            train=TrainConfig(progress=False, max_epochs=40, batch_size=128, learning_rate=0.02, patience=8, checkpoint=False),
            eval=EvalConfig(shots=[1, 5], modes=["random"], draws=1, prior_strengths=[1.0, 10.0]),
        )
        results = run(config, run_dir)
        print(f"trained {model}: seen-user accuracy {results['seen']['accuracy']:.3f} "
              f"(Bayes-optimal {results['bayes_optimal_accuracy']:.3f}, best single reward {results['population_optimal_accuracy']:.3f})")
    return pluralign.load(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/best_of_n")
    parser.add_argument("--model", default="pal_a")
    parser.add_argument("--n", type=int, default=8, help="candidates per prompt")
    args = parser.parse_args()

    trained = train_or_load(pathlib.Path(args.run_dir), args.model)
    reward = trained.reward()
    data = trained.load_dataset()
    items = np.asarray(data.items, np.float32)
    group = np.asarray(data.meta["truth"]["user_group"])
    rng = np.random.default_rng(0)
    candidates = rng.choice(len(items), size=args.n, replace=False)
    print(f"\nmodel {trained.name} (seed {trained.seed}); {args.n} candidate responses = items {candidates.tolist()}")

    print("\n1. seen users, one per true group:")
    for g in np.unique(group):
        user = int(next(u for u in trained.seen_users if group[u] == g))
        best, scores = reward.best_of_n(None, items[candidates], user)
        order = np.argsort(-scores)
        print(f"   user {user:3d} (group {g}): picks item {candidates[best]:3d}; ranking {candidates[order].tolist()}")

    new_user = int(trained.users["row"][trained.users["split"] == "unseen_test"][0])
    rows = np.flatnonzero(data.comparisons.user == new_user)[:8]
    c = data.comparisons.take(rows)
    support = Support(e_a=items[c.a], e_b=items[c.b], label=c.label)
    best, _ = reward.best_of_n(None, items[candidates], support)
    print(f"\n2. new user {new_user} (group {group[new_user]}, never seen in training), from 8 comparisons: "
          f"picks item {candidates[best]}")

    others = np.flatnonzero(data.comparisons.user == new_user)[8:]  # comparisons we can "ask" them about
    print(f"\n3. streaming user {new_user}: ask the most informative of their {len(others)} other recorded "
          "comparisons, one at a time (answers = their recorded labels)")
    online = OnlineUser(reward)
    best, _ = reward.best_of_n(None, items[candidates], online)
    print(f"   before any answer (the population prior): pick item {candidates[best]}")
    for _ in range(6):
        pool = data.comparisons.take(others)
        q, gains = online.next_question(items[pool.a], items[pool.b])
        online.add(items[pool.a[q]], items[pool.b[q]], label=float(pool.label[q]))
        others = np.delete(others, q)
        best, _ = reward.best_of_n(None, items[candidates], online)
        print(f"   asked ({pool.a[q]:3d} vs {pool.b[q]:3d}), expected gain {gains[q]:.3f} nats, answer "
              f"{'first' if pool.label[q] > 0.5 else 'second'}; pick now item {candidates[best]}")

    hook = reward.policy_reward_fn(int(trained.seen_users[0]))
    r = jax.jit(hook)(None, items[candidates])
    print(f"\n4. policy hook: jax.jit(reward_fn)(None, responses [{args.n}, {items.shape[1]}]) -> "
          f"[{', '.join(f'{x:.2f}' for x in np.asarray(r))}]")


if __name__ == "__main__":
    main()
