"""Synthetic annotators of a few hidden types that agree on some pairs and not on others.

The setting of the VPL paper's Pets and UltraFeedback-P experiments (Poddar et al.,
2024): every user belongs to one of K hidden types; on *consensus* pairs all types
prefer the same item, on *controversial* pairs they do not, so a model that ignores
who is answering can at best follow the majority type there. Items are frozen
embeddings in R^D whose preference-relevant part lives in a hidden d-dim subspace:

    r_k(i) = s · ⟨z_i, w_k⟩,    P(a ≻ b | type k) = σ(r_k(a) − r_k(b))

with z_i the item's hidden coordinates and w_k a unit direction per type (s =
`reward_scale`; larger = less label noise). Each user's comparisons are drawn so that a
fraction `controversial_fraction` are controversial (the types' preferred items are
not all the same). `meta["truth"]` reports, as `pluralign.data.synthetic` does, the
Bayes-optimal accuracy (the true per-type model), the population-optimal accuracy (the
best single reward for everyone: the type-frequency-weighted mean preference), each
user's type as `user_group`, and the true rewards r_k(i) as `type_rewards`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pluralign.data.format import Comparisons, PreferenceDataset
from pluralign.data.synthetic import sigmoid, embed_hidden, optimal_accuracies, random_pairs


@dataclasses.dataclass
class HiddenTypesConfig:
    kind: str = "hidden_types"  # which generator; `pluralign.data.sources` dispatches on it
    name: str = "hidden_types"
    n_types: int = 2  # K hidden annotator types
    n_users: int = 1000
    n_items: int = 1000
    comparisons_per_user: int = 40
    dim: int = 32  # D, the embedding size
    latent_dim: int = 4  # d, the hidden preference subspace
    controversial_fraction: float = 0.5  # share of each user's pairs on which the types disagree
    reward_scale: float = 6.0  # s: with the defaults Bayes-optimal ≈ 0.9
    nuisance_scale: float = 1.0  # std of the preference-irrelevant embedding directions
    seed: int = 0

    def __post_init__(self):
        if self.n_types < 1 or self.n_users < 1 or self.n_items < 2 or self.comparisons_per_user < 1:
            raise ValueError("hidden_types needs n_types, n_users, comparisons_per_user >= 1 and n_items >= 2")
        if not 0.0 <= self.controversial_fraction <= 1.0:
            raise ValueError(f"data.controversial_fraction must be in [0, 1], got {self.controversial_fraction}")
        if not 1 <= self.latent_dim <= self.dim:
            raise ValueError(f"data.latent_dim must be in [1, dim={self.dim}], got {self.latent_dim}")


def make_hidden_types(config: HiddenTypesConfig) -> PreferenceDataset:
    """Generates the dataset in memory; `pluralign.data.write_dataset` puts it on disk."""
    rng = np.random.default_rng(config.seed)
    D, d, K, U, n_per = config.dim, config.latent_dim, config.n_types, config.n_users, config.comparisons_per_user

    z = rng.standard_normal((config.n_items, d))  # hidden item coordinates
    items = embed_hidden(rng, z, D, config.nuisance_scale)  # [n_items, D]
    directions = rng.standard_normal((K, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)  # w_k
    rewards = config.reward_scale * z @ directions.T  # [n_items, K]

    # A pool of random pairs, split by whether the types' preferred item differs.
    pool = 4 * U * n_per + 1000
    a, b = random_pairs(rng, config.n_items, pool)
    margin = rewards[a] - rewards[b]  # [pool, K]
    controversial = np.any(margin > 0, axis=1) & np.any(margin < 0, axis=1)
    consensus_rows, controversial_rows = np.flatnonzero(~controversial), np.flatnonzero(controversial)

    n = U * n_per
    n_controversial = rng.binomial(1, config.controversial_fraction, size=n).astype(bool) if K > 1 else np.zeros(n, bool)
    if n_controversial.any() and len(controversial_rows) == 0:
        raise ValueError("hidden_types: the types never disagree; raise n_types or latent_dim")
    rows = np.empty(n, np.int64)
    rows[n_controversial] = rng.choice(controversial_rows, size=int(n_controversial.sum()))
    rows[~n_controversial] = rng.choice(consensus_rows, size=int((~n_controversial).sum()))
    a, b = a[rows], b[rows]

    user = np.repeat(np.arange(U), n_per)
    user_type = rng.integers(K, size=U)
    p_types = sigmoid(rewards[a] - rewards[b])  # [n, K]
    p = p_types[np.arange(n), user_type[user]]
    label = (rng.random(n) < p).astype(np.float32)

    type_share = np.bincount(user_type, minlength=K) / U
    p_bar = p_types @ type_share  # the best non-personalized predictor's probability
    truth = {
        **optimal_accuracies(p, p_bar),
        "controversial_fraction": float(n_controversial.mean()),
        "user_group": user_type.astype(int).tolist(),
        # r_k(i) for every item and type [n_items][K]: lets a script compute k-shot ceilings
        # (the Bayes posterior over types from k answers), not only the known-type one.
        "type_rewards": np.round(rewards, 5).tolist(),
        "generator": dataclasses.asdict(config),
    }
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=label)
    meta = {"name": config.name, "n_users": U, "source": "pluralign.data.hidden_types.make_hidden_types", "truth": truth}
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)


def type_posterior_accuracy(truth: dict, comparisons: Comparisons, support: np.ndarray, query: np.ndarray) -> float:
    """The k-shot ceiling: accuracy on `query` rows [U, Q] of the Bayes predictor that knows
    every type's rewards but not the user's type, inferring it from the `support` rows
    [U, k] (−1 = padding) with the type shares as prior; P(y | S) = Σ_k P(k | S) P(y | k)."""
    rewards = np.asarray(truth["type_rewards"])  # [n_items, K]
    groups = np.asarray(truth["user_group"])
    prior = np.log(np.bincount(groups, minlength=rewards.shape[1]) / len(groups) + 1e-12)  # [K]

    def p_types(rows):  # [U, n] -> P(a ≻ b | type) [U, n, K]
        safe = np.maximum(rows, 0)
        return sigmoid(rewards[comparisons.a[safe]] - rewards[comparisons.b[safe]])

    p_s, y_s = p_types(support), comparisons.label[np.maximum(support, 0)][..., None]
    log_lik = np.where(support[..., None] >= 0, np.log(np.where(y_s > 0.5, p_s, 1.0 - p_s)), 0.0).sum(axis=1)  # [U, K]
    post = np.exp(log_lik + prior - (log_lik + prior).max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    p_q = np.einsum("uqk,uk->uq", p_types(query), post)
    valid = query >= 0
    correct = (p_q > 0.5) == (comparisons.label[np.maximum(query, 0)] > 0.5)
    return float((correct & valid).sum() / valid.sum())
