"""Built-in synthetic multi-attribute data: users are directions over m rated attributes.

The setting of "Arithmetic Control of LLMs for Diverse User Preferences: Directional
Preference Alignment with Multi-Objective Rewards" (Wang et al., 2024), on frozen
embeddings. Every item has m latent attribute values z ∈ R^m (helpfulness, …,
verbosity; correlated, so that verbosity leaks into the others as it does in real
ratings), visible through its embedding: the first m coordinates of [z; nuisance] in
a randomly rotated basis of R^D. Raters score each attribute with Gaussian noise and
leave some scores out:

    attributes[i, j] = z_ij + σ ε_ij     (NaN with probability `missing_fraction`)

A user is a unit direction v_u ∈ S^{m−1} (a perturbed population direction) and

    P(a ≻ b | u) = σ(β · v_uᵀ (z_a − z_b)).

`meta["truth"]` reports, from the true parameters:

- `bayes_optimal_accuracy` E[max(p, 1 − p)] and `population_optimal_accuracy` (the best
  predictor that ignores who the user is answers with p̄(a, b) = E_u p_u(a, b)), as in
  `pluralign.data.synthetic`;
- `user_directions` [U, m], `item_attributes` [n_items, m] (the true z), `attribute_mixing`
  (z = L·g, g standard normal);
- `r2_ceiling` per attribute: Var(z_j) / (Var(z_j) + σ²), the R² that E[rating | item] = z_j
  itself reaches on noisy held-out ratings; no regression on the embedding can beat it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pluralign.data.format import Comparisons, PreferenceDataset
from pluralign.data.synthetic import sigmoid, embed_hidden, optimal_accuracies, random_pairs


@dataclasses.dataclass
class MultiAttributeConfig:
    kind: str = "multi_attribute"  # which generator; `pluralign.data.sources` dispatches on it
    name: str = "multi_attribute"
    n_users: int = 500
    n_items: int = 2000
    comparisons_per_user: int = 60
    dim: int = 32  # D, the embedding size
    # m = len(attribute_names); the last one is the "verbosity" that others leak into.
    attribute_names: list[str] = dataclasses.field(default_factory=lambda: ["helpfulness", "honesty", "verbosity"])
    verbosity_leak: float = 0.4  # correlation of every other attribute with the last one
    rating_noise: float = 0.3  # σ, std of a rater's error on one attribute score
    missing_fraction: float = 0.2  # probability that one attribute score is missing (NaN)
    # Users: v_u = normalize(μ + spread · ε), μ = normalize(population_direction).
    population_direction: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.5, 0.3])
    user_spread: float = 0.6
    sharpness: float = 3.0  # β; with the defaults Bayes-optimal ≈ 0.86
    n_prompts: int = 0  # > 0: each comparison gets one of this many (preference-irrelevant) prompts
    nuisance_scale: float = 1.0  # std of the preference-irrelevant embedding directions
    seed: int = 0


def _check(config: MultiAttributeConfig) -> int:
    m = len(config.attribute_names)
    if m < 2 or len(set(config.attribute_names)) != m:
        raise ValueError(f"attribute_names must be >= 2 distinct names, got {config.attribute_names}")
    if m > config.dim:
        raise ValueError(f"{m} attributes do not fit in dim = {config.dim}")
    if len(config.population_direction) != m or not np.any(config.population_direction):
        raise ValueError(f"population_direction must be a non-zero vector of length {m}, got {config.population_direction}")
    if not 0.0 <= config.missing_fraction < 1.0 or config.rating_noise < 0 or not -1 < config.verbosity_leak < 1:
        raise ValueError("need 0 <= missing_fraction < 1, rating_noise >= 0 and -1 < verbosity_leak < 1")
    if config.n_items < 2 or config.comparisons_per_user < 1 or config.n_users < 1:
        raise ValueError("need at least 2 items, 1 user and 1 comparison per user")
    return m


def make_multi_attribute(config: MultiAttributeConfig) -> PreferenceDataset:
    """Generates the dataset in memory; `pluralign.data.write_dataset` puts it on disk."""
    m = _check(config)
    rng = np.random.default_rng(config.seed)
    D, U, n_items = config.dim, config.n_users, config.n_items

    # Attribute correlation: unit variances, every attribute correlated `verbosity_leak` with the
    # last one and leak² with each other (a one-factor model), so Σ is positive definite.
    leak = np.full(m, config.verbosity_leak)
    leak[-1] = 1.0
    cov = np.outer(leak, leak)
    np.fill_diagonal(cov, 1.0)
    mixing = np.linalg.cholesky(cov)  # z = L g
    z = rng.standard_normal((n_items, m)) @ mixing.T  # [n_items, m]
    items = embed_hidden(rng, z, D, config.nuisance_scale)  # [n_items, D]

    ratings = z + config.rating_noise * rng.standard_normal(z.shape)
    ratings[rng.random(z.shape) < config.missing_fraction] = np.nan
    attributes = ratings.astype(np.float32)

    mean_direction = np.asarray(config.population_direction, float)
    mean_direction /= np.linalg.norm(mean_direction)
    directions = mean_direction + config.user_spread * rng.standard_normal((U, m))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)  # [U, m]

    n = U * config.comparisons_per_user
    user = np.repeat(np.arange(U), config.comparisons_per_user)
    a, b = random_pairs(rng, n_items, n)
    dz = z[a] - z[b]  # [n, m]
    p = sigmoid(config.sharpness * np.einsum("nm,nm->n", directions[user], dz))
    label = (rng.random(n) < p).astype(np.float32)

    # Population-average preference p̄(a, b), averaged over 256 fresh users from the same law.
    population = mean_direction + config.user_spread * rng.standard_normal((256, m))
    population /= np.linalg.norm(population, axis=1, keepdims=True)
    p_bar = sigmoid(config.sharpness * dz @ population.T).mean(axis=1)

    prompts, prompt = None, None
    if config.n_prompts > 0:
        prompts = rng.standard_normal((config.n_prompts, D)).astype(np.float32)
        prompt = rng.integers(config.n_prompts, size=n)

    variance = np.diag(cov)
    truth = {
        **optimal_accuracies(p, p_bar),
        "user_directions": directions.tolist(),
        "population_direction": mean_direction.tolist(),
        "attribute_mixing": mixing.tolist(),
        "item_attributes": z.round(6).tolist(),  # [n_items, m] true z, for arithmetic-control experiments
        "r2_ceiling": (variance / (variance + config.rating_noise**2)).tolist(),
        "generator": dataclasses.asdict(config),
    }
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=label, prompt=prompt)
    meta = {
        "name": config.name, "n_users": U, "source": "pluralign.data.multi_attribute.make_multi_attribute",
        "attribute_names": list(config.attribute_names), "truth": truth,
    }
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta, prompts=prompts, attributes=attributes)
