"""Built-in intransitive (cyclic) preference data with known ground truth, for GPM.

Follows the cyclic-preference experiments of "Beyond Bradley-Terry Models: A General
Preference Model for LM Alignment" (Zhang et al., 2024) on synthetic embeddings. Every
generator hides a skew-symmetric score in a few coordinates of the item embeddings:
item i has hidden blocks z_i ∈ R^{2k}, the embedding in R^D is [z_i; nuisance] under a
random rotation, and

    s(a ≻ b) = Σ_l g_l (z_a,2l z_b,2l+1 − z_a,2l+1 z_b,2l),    P(a ≻ b) = σ(s / T)

(the GPM score with gate g). Within a block, s ∝ sin(θ_b − θ_a) of the items' angles:
rotational, not transitive, preferences. Generators:

- `cyclic_triplets`: the paper's cyclic tables. Each triplet is three items 120° apart on
  the unit circle (k = 1), giving A ≻ B ≻ C ≻ A; each user holds their own triplets. A
  scalar reward orders a triplet and so gets at most 2 of its 3 comparisons right.
- `cyclic_skew`: a random skew-symmetric preference matrix of rank 2k over many items
  (k Gaussian blocks with decaying gains), optionally plus a transitive (BT) part.
- `cyclic_users`: user types whose cycles differ: all share the k blocks, but type t's
  gate puts its weight on block t, so types disagree on which items beat which.

`meta["truth"]` holds `bayes_optimal_accuracy` (the true model), `population_optimal_accuracy`
(the best non-personalized predictor, answering with the population-average P), and
`user_group`; `cyclic_triplets` also reports `best_scalar_reward_accuracy` (the best any
reward model can do) and `cyclic_skew` the accuracy of the true Borda ranking (ranking by
average true preference), a strong transitive reference, not a ceiling.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from pluralign.data.format import Comparisons, PreferenceDataset
from pluralign.data.synthetic import (
    sigmoid, embed_hidden, optimal_accuracies, population_types, random_pairs, sample_user_weights,
)


@dataclasses.dataclass
class CyclicTripletsConfig:
    kind: str = "cyclic_triplets"  # `pluralign.data.sources` dispatches on it
    name: str = "cyclic_triplets"
    n_users: int = 200
    triplets_per_user: int = 10  # each gives 3 comparisons: (A, B), (B, C), (C, A)
    dim: int = 16  # D
    angle_jitter: float = 0.2  # std (radians) of each item's offset from the exact 120° spacing
    # T; 0 = deterministic labels (the paper's table: every triplet is a strict cycle).
    noise_temperature: float = 0.0
    nuisance_scale: float = 1.0  # std of the preference-irrelevant embedding directions
    seed: int = 0


@dataclasses.dataclass
class CyclicSkewConfig:
    kind: str = "cyclic_skew"
    name: str = "cyclic_skew"
    n_users: int = 200
    n_items: int = 1000
    comparisons_per_user: int = 50
    dim: int = 32
    n_blocks: int = 2  # k: the skew-symmetric score matrix has rank 2k
    block_decay: float = 0.5  # gain of block l is signal_scale · decay^l
    signal_scale: float = 3.0
    transitive_scale: float = 0.0  # weight of an added BT part r_a − r_b (r: one more hidden coordinate)
    noise_temperature: float = 1.0
    nuisance_scale: float = 1.0
    seed: int = 0


@dataclasses.dataclass
class CyclicUsersConfig:
    kind: str = "cyclic_users"
    name: str = "cyclic_users"
    n_users: int = 600
    n_items: int = 1000
    comparisons_per_user: int = 60
    dim: int = 32
    n_blocks: int = 3  # k shared cyclic blocks
    n_types: int = 3  # user types; type t's gate emphasises block t (needs n_types <= n_blocks)
    off_gate: float = 0.1  # weight of the other blocks in a type's gate (1 = all types agree)
    signal_scale: float = 3.0
    mixture: bool = False  # users are Dirichlet mixtures of the type gates instead of members
    mixture_concentration: float = 0.3
    noise_temperature: float = 1.0
    nuisance_scale: float = 1.0
    seed: int = 0


def skew_score(gate: np.ndarray, z_a: np.ndarray, z_b: np.ndarray) -> np.ndarray:
    """Σ_l g_l (z_a,2l z_b,2l+1 − z_a,2l+1 z_b,2l): gate [..., k], z [..., 2k] -> [...]."""
    return np.sum(gate * (z_a[..., 0::2] * z_b[..., 1::2] - z_a[..., 1::2] * z_b[..., 0::2]), axis=-1)


def _probability(score: np.ndarray, temperature: float) -> np.ndarray:
    """P(a ≻ b) = σ(s / T); T = 0 gives hard labels (1, 0, or 1/2 on an exact tie)."""
    if temperature == 0:
        return np.where(score > 0, 1.0, np.where(score < 0, 0.0, 0.5))
    return sigmoid(score / temperature)


def _labels(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    return (rng.random(p.shape) < p).astype(np.float32)


def _dataset(config, items, user, a, b, p, p_population, user_group, rng, extra_truth=None) -> PreferenceDataset:
    truth = {
        **optimal_accuracies(p, p_population),
        "user_group": np.asarray(user_group).astype(int).tolist(),
        "generator": dataclasses.asdict(config),
        **(extra_truth or {}),
    }
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=_labels(rng, p))
    meta = {"name": config.name, "n_users": config.n_users, "source": f"pluralign.data.cyclic ({config.kind})", "truth": truth}
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)


def make_cyclic_triplets(config: CyclicTripletsConfig) -> PreferenceDataset:
    """Triplets A ≻ B ≻ C ≻ A: items 120° apart on the unit circle of a hidden plane."""
    if config.n_users < 1 or config.triplets_per_user < 1:
        raise ValueError("need at least 1 user and 1 triplet per user")
    if not 0 <= config.angle_jitter < np.pi / 12:
        # Each gap is 120° ± 2·jitter·(a few σ); beyond ~15° σ gaps may leave (0°, 180°) and break the cycle.
        raise ValueError(f"angle_jitter must be in [0, π/12), got {config.angle_jitter}")
    rng = np.random.default_rng(config.seed)
    n_triplets = config.n_users * config.triplets_per_user
    base = rng.uniform(0.0, 2 * np.pi, size=(n_triplets, 1))
    angles = base + 2 * np.pi * np.arange(3)[None, :] / 3 + config.angle_jitter * rng.standard_normal((n_triplets, 3))
    z = np.stack([np.cos(angles), np.sin(angles)], axis=-1).reshape(3 * n_triplets, 2)  # item 3t + j
    items = embed_hidden(rng, z, config.dim, config.nuisance_scale)

    first = 3 * np.arange(n_triplets)[:, None]
    a = (first + np.array([[0, 1, 2]])).reshape(-1)  # (A, B), (B, C), (C, A)
    b = (first + np.array([[1, 2, 0]])).reshape(-1)
    swap = rng.random(a.shape) < 0.5  # present each pair in a random order, so labels are balanced
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    p = _probability(skew_score(np.ones(1), z[a], z[b]), config.noise_temperature)  # [3 n_triplets]
    user = np.repeat(np.arange(config.n_users), 3 * config.triplets_per_user)

    # A reward orders each triplet; the best order gets max over the 6 orders of the expected number right.
    p_triplet = p.reshape(n_triplets, 3)
    a_t, b_t = a.reshape(n_triplets, 3) % 3, b.reshape(n_triplets, 3) % 3
    best = np.zeros(n_triplets)
    for order in itertools.permutations(range(3)):
        rank = np.asarray(order)  # rank[j] = position of item j, 0 = best
        right = np.where(rank[a_t] < rank[b_t], p_triplet, 1.0 - p_triplet).sum(axis=1)
        best = np.maximum(best, right)
    extra = {"best_scalar_reward_accuracy": float(best.mean() / 3)}
    return _dataset(config, items, user, a, b, p, p, np.zeros(config.n_users), rng, extra)


def make_cyclic_skew(config: CyclicSkewConfig) -> PreferenceDataset:
    """A random rank-2k skew-symmetric score over many items (plus an optional BT part)."""
    if config.n_items < 2 or config.comparisons_per_user < 1 or config.n_blocks < 1:
        raise ValueError("need at least 2 items, 1 comparison per user and 1 block")
    rng = np.random.default_rng(config.seed)
    k = config.n_blocks
    z = rng.standard_normal((config.n_items, 2 * k))
    r = rng.standard_normal(config.n_items)  # the transitive part's reward coordinate
    items = embed_hidden(rng, np.concatenate([z, r[:, None]], axis=1), config.dim, config.nuisance_scale)
    gate = config.signal_scale * config.block_decay ** np.arange(k)  # [k]

    def score(a, b):
        return skew_score(gate, z[a], z[b]) + config.transitive_scale * (r[a] - r[b])

    n = config.n_users * config.comparisons_per_user
    user = np.repeat(np.arange(config.n_users), config.comparisons_per_user)
    a, b = random_pairs(rng, config.n_items, n)
    p = _probability(score(a, b), config.noise_temperature)

    # Borda scores: average true preference of each item against all others, in row chunks.
    borda = np.zeros(config.n_items)
    everyone = np.arange(config.n_items)
    for start in range(0, config.n_items, 256):
        rows = everyone[start:start + 256]
        borda[rows] = _probability(score(rows[:, None], everyone[None, :]), config.noise_temperature).mean(axis=1)
    borda_accuracy = float(np.mean(np.where(borda[a] > borda[b], p, 1.0 - p)))
    extra = {"borda_ranking_accuracy": borda_accuracy, "skew_rank": 2 * k}
    return _dataset(config, items, user, a, b, p, p, np.zeros(config.n_users), rng, extra)


def make_cyclic_users(config: CyclicUsersConfig) -> PreferenceDataset:
    """User types sharing k cyclic blocks but weighting them differently (their cycles differ)."""
    if not 1 <= config.n_types <= config.n_blocks:
        raise ValueError(f"n_types must be in [1, n_blocks={config.n_blocks}], got {config.n_types}")
    if config.n_items < 2 or config.comparisons_per_user < 1:
        raise ValueError("need at least 2 items and 1 comparison per user")
    if config.off_gate < 0:
        raise ValueError(f"off_gate must be >= 0, got {config.off_gate}")
    rng = np.random.default_rng(config.seed)
    k, K, U = config.n_blocks, config.n_types, config.n_users
    z = rng.standard_normal((config.n_items, 2 * k))
    items = embed_hidden(rng, z, config.dim, config.nuisance_scale)
    type_gates = config.signal_scale * (config.off_gate + (1.0 - config.off_gate) * np.eye(k)[:K])  # [K, k]
    user_weights, user_group = sample_user_weights(rng, K, U, config.mixture, config.mixture_concentration)  # [U, K]
    user_gate = user_weights @ type_gates  # [U, k]

    n = U * config.comparisons_per_user
    user = np.repeat(np.arange(U), config.comparisons_per_user)
    a, b = random_pairs(rng, config.n_items, n)
    p = _probability(skew_score(user_gate[user], z[a], z[b]), config.noise_temperature)
    # Population-average preference: exact over types for members, Monte Carlo over 256 users for mixtures.
    population_gates, shares = population_types(rng, type_gates, user_group, config.mixture, config.mixture_concentration)
    p_population = sum(
        w * _probability(skew_score(g[None, :], z[a], z[b]), config.noise_temperature)
        for w, g in zip(shares, population_gates)
    )
    return _dataset(config, items, user, a, b, p, p_population, user_group, rng)
