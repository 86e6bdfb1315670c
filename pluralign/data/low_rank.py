"""Realistic synthetic users: a dominant shared reward plus a low-rank personal deviation.

Real annotators agree on most comparisons and differ continuously in a few directions,
with some of them more decisive than others; they are not K discrete types. This
generator (`data=shared_plus_low_rank`) plants exactly that, in the form LoRe assumes
(Bose et al. 2025, "Personalizing LLMs via Low-Rank Reward Modeling"):

    r_u(i) = β_u · ( s · ⟨w₀, z_i⟩ + ⟨v_u, B z_i⟩ ),     P(a ≻ b | u) = σ(r_u(a) − r_u(b))

with z_i ∈ R^{1+rank} the item's hidden coordinates (embedded into R^D with nuisance
directions by `synthetic.embed_hidden`), w₀ the shared direction and s = `shared_scale`
its weight, B the `rank` deviation directions (orthogonal to w₀), v_u ~ N(0, σ² I_rank)
the user's Gaussian weights (σ = `deviation_scale`), and β_u ~ LogNormal with mean 1
and log-std `sharpness_spread` the user's decisiveness (label noise varies by user).

Items are reused across users as in dense rating data: a common pool of `n_items`;
each user sees `items_per_user` of them (0 = the whole pool) and compares
`comparisons_per_user` random pairs among those. There are no prompts.

`meta["truth"]` reports, as the other generators do (`synthetic.optimal_accuracies`):
`bayes_optimal_accuracy` (the true per-user model) and `population_optimal_accuracy`
(the best non-personalized predictor, answering with the population's average
preference P̄(a ≻ b) = E_u[P(a ≻ b | u)], a Monte-Carlo average over
`population_samples` users freshly drawn from the user distribution, on the same
pairs). With the defaults they are ≈ 0.88 and ≈ 0.77. It also holds every user's
weights v_u and sharpness β_u, so a script can compute k-shot ceilings. There is no
`user_group`: users are not types.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pluralign.data.format import Comparisons, PreferenceDataset
from pluralign.data.synthetic import sigmoid, embed_hidden, optimal_accuracies, random_pairs


@dataclasses.dataclass
class SharedPlusLowRankConfig:
    kind: str = "shared_plus_low_rank"  # which generator; `pluralign.data.sources` dispatches on it
    name: str = "shared_plus_low_rank"
    n_users: int = 1000
    n_items: int = 300  # the common pool every user draws from
    items_per_user: int = 30  # items a user sees (pairs are drawn among them); 0 = the whole pool
    comparisons_per_user: int = 60
    dim: int = 32  # D, the embedding size
    rank: int = 3  # directions in which users deviate from the shared reward
    shared_scale: float = 3.0  # s: weight of the shared reward direction (dominant)
    deviation_scale: float = 1.3  # σ: std of each user's weight on each deviation direction
    sharpness_spread: float = 0.5  # log-std of β_u (mean 1); 0 = every user equally noisy
    population_samples: int = 256  # Monte-Carlo users for the population-average preference
    nuisance_scale: float = 1.0  # std of the preference-irrelevant embedding directions
    seed: int = 0

    def __post_init__(self):
        if self.n_users < 1 or self.comparisons_per_user < 1 or self.population_samples < 1:
            raise ValueError("shared_plus_low_rank needs n_users, comparisons_per_user, population_samples >= 1")
        if self.n_items < 2:
            raise ValueError(f"data.n_items must be >= 2, got {self.n_items}")
        if self.items_per_user != 0 and not 2 <= self.items_per_user <= self.n_items:
            raise ValueError(f"data.items_per_user must be 0 (the whole pool) or in [2, n_items={self.n_items}], "
                             f"got {self.items_per_user}")
        if not 0 <= self.rank < self.dim:
            raise ValueError(f"data.rank must be in [0, dim={self.dim}), got {self.rank}")
        if self.shared_scale < 0 or self.deviation_scale < 0 or self.sharpness_spread < 0:
            raise ValueError("data.shared_scale, deviation_scale and sharpness_spread must be >= 0")


def sample_sharpness(rng: np.random.Generator, spread: float, n: int) -> np.ndarray:
    """β ~ LogNormal(−spread²/2, spread): mean 1, log-std `spread`."""
    return np.exp(spread * rng.standard_normal(n) - 0.5 * spread ** 2)


def user_pairs(rng: np.random.Generator, config: SharedPlusLowRankConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each user's comparisons_per_user random pairs among the items_per_user items they see."""
    U, n_per = config.n_users, config.comparisons_per_user
    if config.items_per_user == 0:
        return random_pairs(rng, config.n_items, U * n_per)
    seen = np.argsort(rng.random((U, config.n_items)), axis=1)[:, :config.items_per_user]  # [U, m] distinct
    i, j = random_pairs(rng, config.items_per_user, U * n_per)  # positions within a user's items
    rows = np.repeat(np.arange(U), n_per)
    return seen[rows, i], seen[rows, j]


def make_shared_plus_low_rank(config: SharedPlusLowRankConfig) -> PreferenceDataset:
    """Generates the dataset in memory; `pluralign.data.write_dataset` puts it on disk."""
    rng = np.random.default_rng(config.seed)
    U, r = config.n_users, config.rank

    # Hidden coordinates: column 0 is the shared direction w₀, columns 1..rank the deviation basis B.
    z = rng.standard_normal((config.n_items, 1 + r))
    items = embed_hidden(rng, z, config.dim, config.nuisance_scale)  # [n_items, D]
    weights = config.deviation_scale * rng.standard_normal((U, r))  # v_u
    sharpness = sample_sharpness(rng, config.sharpness_spread, U)  # β_u

    user = np.repeat(np.arange(U), config.comparisons_per_user)
    a, b = user_pairs(rng, config)
    dz = z[a] - z[b]  # [n, 1 + r]
    shared, deviation = config.shared_scale * dz[:, 0], dz[:, 1:]  # [n], [n, r]
    p = sigmoid(sharpness[user] * (shared + np.einsum("nr,nr->n", deviation, weights[user])))
    label = (rng.random(len(p)) < p).astype(np.float32)

    # P̄(a ≻ b): the same pairs judged by fresh users from the user distribution, averaged.
    M = config.population_samples
    population_weights = config.deviation_scale * rng.standard_normal((M, r))
    population_sharpness = sample_sharpness(rng, config.sharpness_spread, M)
    p_bar = np.empty(len(p))
    for start in range(0, len(p), 4096):  # [rows, M] at a time
        rows = slice(start, start + 4096)
        logits = population_sharpness * (shared[rows, None] + deviation[rows] @ population_weights.T)
        p_bar[rows] = sigmoid(logits).mean(axis=1)

    truth = {
        **optimal_accuracies(p, p_bar),
        "user_weights": np.round(weights, 5).tolist(),  # v_u [U][rank]
        "user_sharpness": np.round(sharpness, 5).tolist(),  # β_u [U]
        "generator": dataclasses.asdict(config),
    }
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=label)
    meta = {"name": config.name, "n_users": U, "source": "pluralign.data.low_rank.make_shared_plus_low_rank",
            "truth": truth}
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)
