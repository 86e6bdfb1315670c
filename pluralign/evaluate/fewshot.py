"""The evaluation protocol shared by every model (DESIGN §6).

Seen users: accuracy, log-loss, ECE and per-user accuracy on their held-out pairs.

Unseen users: for each user an *episode* splits their comparisons into a query set
and a support pool. For k shots the first k pool pairs are the support; the user's
state is inferred from them with θ frozen (`model.infer_user`, vmapped over users in
one call) and scored on the query set, which is the same for every k. Two modes:

- `random`: query = a random half of the user's comparisons, pool = the rest.
- `item_disjoint`: the pool keeps only comparisons that share no item with the query,
  so a model cannot score by remembering how the user judged the very same items.

A user enters the k-shot figure only if their pool holds at least k pairs (the
number of users per k is reported), and a k is reported only if at least
`min_user_fraction` of the users enter it. Episodes are drawn per seed and per draw.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.data.format import Comparisons
from pluralign.data.splits import rows_by_user
from pluralign.evaluate import metrics
from pluralign.models import base


@dataclasses.dataclass
class EvalConfig:
    shots: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 5, 10, 20, 50])  # k: support comparisons per unseen user
    # support/query split: random (as in the papers) and/or item_disjoint (no item shared; DESIGN §6)
    modes: list[str] = dataclasses.field(default_factory=lambda: ["random", "item_disjoint"])
    draws: int = 2  # support/query draws per seed
    # A k is reported only where at least this fraction of the users have k support pairs:
    # a figure from the few users with unusually many comparisons would be biased.
    min_user_fraction: float = 0.5
    # Gaussian prior precision on the user state for MAP few-shot inference; the value is
    # chosen on unseen-val users (never on unseen-test).
    prior_strengths: list[float] = dataclasses.field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0])
    inference_steps: int = 100  # optimiser steps of few-shot MAP inference (PAL, DPA, GPM); VPL is amortised
    inference_learning_rate: float = 0.1  # learning rate of few-shot MAP inference
    split_seed: int = 0  # user split and seen-pair split; fixed across training seeds
    unseen_val_fraction: float = 0.1  # users held out for model selection (the prior strength, sweeps)
    unseen_test_fraction: float = 0.2  # users held out for the reported unseen-user figures only
    pair_val_fraction: float = 0.1  # seen users' pairs for early stopping
    pair_test_fraction: float = 0.1  # seen users' held-out pairs for the seen-user figures

    def __post_init__(self):
        # Fail at start-up, not after training.
        if not self.shots or any(int(k) < 1 for k in self.shots):
            raise ValueError(f"eval.shots must be positive integers, got {self.shots}")
        unknown = set(self.modes) - {"random", "item_disjoint"}
        if not self.modes or unknown:
            raise ValueError(f"eval.modes must be a non-empty subset of [random, item_disjoint], got {self.modes}")
        if self.draws < 1:
            raise ValueError(f"eval.draws must be >= 1, got {self.draws}")
        if not self.prior_strengths or any(s < 0 for s in self.prior_strengths):
            raise ValueError(f"eval.prior_strengths must be a non-empty list of values >= 0, got {self.prior_strengths}")


@dataclasses.dataclass(frozen=True)
class Episodes:
    users: np.ndarray  # [U]
    support: np.ndarray  # [U, P] comparison rows, -1 = none; the first k are the k-shot support
    query: np.ndarray  # [U, Q] comparison rows, -1 = none
    pool_size: np.ndarray  # [U]


def make_episodes(comparisons: Comparisons, users: np.ndarray, *, max_shots: int, mode: str, seed: int) -> Episodes:
    if mode not in ("random", "item_disjoint"):
        raise ValueError(f"unknown few-shot mode {mode!r}; use 'random' or 'item_disjoint'")
    rng = np.random.default_rng(seed)
    order, offsets = rows_by_user(comparisons, users)
    supports, queries = [], []
    for i in range(len(users)):
        rows = rng.permutation(order[offsets[i] : offsets[i + 1]])
        n_query = max(1, (len(rows) + 1) // 2)
        query, rest = rows[:n_query], rows[n_query:]
        if mode == "item_disjoint":
            seen_items = np.union1d(comparisons.a[query], comparisons.b[query])
            keep = ~(np.isin(comparisons.a[rest], seen_items) | np.isin(comparisons.b[rest], seen_items))
            rest = rest[keep]
        supports.append(rest[:max_shots])
        queries.append(query)
    return Episodes(
        users=np.asarray(users),
        support=_pad(supports, max_shots),
        query=_pad(queries, max((len(q) for q in queries), default=1)),
        pool_size=np.array([len(s) for s in supports]),
    )


def _pad(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), max(width, 1)), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _as_batch(comparisons: Comparisons, rows: np.ndarray) -> base.PairBatch:
    """[U, n] rows (−1 = padding) -> a PairBatch of [U, n] arrays with weight 0 on padding."""
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    return base.PairBatch(
        user=jnp.asarray(comparisons.user[safe]),
        prompt=jnp.asarray(comparisons.prompt[safe]),
        a=jnp.asarray(comparisons.a[safe]),
        b=jnp.asarray(comparisons.b[safe]),
        label=jnp.asarray(comparisons.label[safe]),
        weight=jnp.asarray(np.where(valid, comparisons.weight[safe], 0.0).astype(np.float32)),
    )


def _features(model, tables, batch):
    """Pair features for a [U, n] batch, computed as one flat [U·n] batch."""
    flat = jax.tree.map(lambda x: x.reshape(-1), batch)
    feats = model.pair_features(base.gather(tables, flat))
    return jax.tree.map(lambda f: f.reshape(*batch.label.shape, *f.shape[1:]), feats)


def make_adapt_and_predict(graphdef: nnx.GraphDef, steps: int, learning_rate: float):
    """Returns a jitted fn: (params, tables, support, n_shots, query, strength, seen_users)
    -> (states [U, S], query logits [U, Q]). The prior mean is the average of `seen_users`' states."""

    @jax.jit
    def adapt_and_predict(params, tables, support: base.PairBatch, n_shots, query: base.PairBatch, strength, seen_users):
        model = nnx.merge(graphdef, params)
        support_feats = _features(model, tables, support)
        # The first n_shots pool pairs are the support; the rest of the pool is masked out.
        shot_mask = jnp.arange(support.label.shape[1])[None, :] < n_shots
        states = model.infer_user(
            support_feats, support.label, support.weight * shot_mask,
            prior_mean=model.population_user_state(seen_users), prior_strength=strength, steps=steps, learning_rate=learning_rate,
        )  # [U, S]
        query_feats = _features(model, tables, query)
        q = query.label.shape[1]
        logits = jax.vmap(lambda s, f: model.pair_logits(jnp.broadcast_to(s, (q, s.shape[0])), f))(states, query_feats)
        return states, logits

    return adapt_and_predict


def evaluate_unseen(
    adapt_and_predict,
    params,
    tables: base.Tables,
    comparisons: Comparisons,
    users: np.ndarray,
    *,
    shots: list[int],
    mode: str,
    seeds: list[int],
    draws: int,
    prior_strength: float,
    seen_users: np.ndarray,
    min_user_fraction: float = 0.5,
    user_group: np.ndarray | None = None,
) -> dict:
    """k-shot metrics on unseen users for every seed (params carry a leading seed axis) and draw.

    Returns {k: {accuracy, accuracy_std, log_loss, ece, per_user_mean, per_user_p10, n_users
    [, worst_group_accuracy]}}.
    """
    if len(users) == 0:
        return {}
    max_shots = max(shots)
    per_k: dict[int, list[dict]] = {k: [] for k in shots}
    for seed_index, seed in enumerate(seeds):
        seed_params = jax.tree.map(lambda x: x[seed_index], params)
        for draw in range(draws):
            episode_seed = int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])
            episodes = make_episodes(comparisons, users, max_shots=max_shots, mode=mode, seed=episode_seed)
            support = _as_batch(comparisons, episodes.support)
            query = _as_batch(comparisons, episodes.query)
            for k in shots:
                eligible = episodes.pool_size >= k
                if not eligible.any() or eligible.mean() < min_user_fraction:
                    continue
                _, logits = adapt_and_predict(
                    seed_params, tables, support, jnp.int32(k), query, jnp.float32(prior_strength), seen_users
                )
                w = np.asarray(query.weight) * eligible[:, None]
                per_k[k].append(
                    metrics.summary(
                        np.asarray(logits).ravel(), np.asarray(query.label).ravel(), w.ravel(),
                        np.asarray(query.user).ravel(), user_group,
                    )
                )
    out = {}
    for k, runs in per_k.items():
        if not runs:
            continue
        acc = np.array([r["accuracy"] for r in runs])
        out[k] = {
            "accuracy": float(acc.mean()),
            "accuracy_std": float(acc.std()),
            "log_loss": float(np.mean([r["log_loss"] for r in runs])),
            "ece": float(np.mean([r["ece"] for r in runs])),
            "per_user_mean": float(np.mean([r["per_user"]["mean"] for r in runs])),
            "per_user_p10": float(np.mean([r["per_user"]["p10"] for r in runs])),
            "n_users": int(np.mean([r["per_user"]["n_users"] for r in runs])),
        }
        if user_group is not None:
            out[k]["worst_group_accuracy"] = float(np.mean([r["worst_group_accuracy"] for r in runs]))
    return out
