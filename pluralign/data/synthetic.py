"""Built-in synthetic preference data with known ground truth (no download).

`ideal_point` follows the synthetic setting of the PAL paper (Chen et al., 2025):
items have frozen embeddings in R^D whose preference-relevant part lives in a
hidden d-dimensional subspace; K user groups each have an ideal point there; a user
is a member of one group (or, by option, a Dirichlet mixture of groups); and

    P(a ≻ b | u) = σ((‖z_b − a_u‖² − ‖z_a − a_u‖²) / T)

with z the item's hidden coordinates and T the noise temperature. Because the true
probabilities are known, the generator reports two ceilings in `meta["truth"]`:

- `bayes_optimal_accuracy`: E[max(p, 1 − p)], the accuracy of the true model.
- `population_optimal_accuracy`: the accuracy of the best *non-personalized*
  predictor, which answers every comparison with the population-average preference
  p̄(a, b) = E_u[p_u(a, b)]. No BT model can beat it; the gap between the two is
  what personalization can win.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pluralign.data.format import Comparisons, PreferenceDataset


@dataclasses.dataclass
class IdealPointConfig:
    kind: str = "ideal_point"  # which generator; `pluralign.data.sources` dispatches on it
    name: str = "ideal_point"
    n_users: int = 1000
    n_items: int = 2000
    comparisons_per_user: int = 100
    dim: int = 64  # D, the embedding size
    latent_dim: int = 4  # d, the hidden preference subspace
    n_groups: int = 3  # K true user groups
    group_spread: float = 1.5  # std of the group ideal points, in units of the item spread
    mixture: bool = False  # users are Dirichlet mixtures of groups instead of members
    mixture_concentration: float = 0.3
    # T: larger = noisier labels. With the defaults, Bayes-optimal ≈ 0.93 and the best
    # non-personalized predictor ≈ 0.76: the groups genuinely disagree.
    noise_temperature: float = 1.0
    nuisance_scale: float = 1.0  # std of the preference-irrelevant embedding directions
    seed: int = 0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _preference_prob(z: np.ndarray, ideal: np.ndarray, a: np.ndarray, b: np.ndarray, temperature: float):
    """P(a ≻ b) for ideal points `ideal` [N, d] (broadcast against item rows a, b [N])."""
    sq_a = np.sum(np.square(z[a] - ideal), axis=-1)
    sq_b = np.sum(np.square(z[b] - ideal), axis=-1)
    return sigmoid((sq_b - sq_a) / temperature)


def embed_hidden(rng: np.random.Generator, hidden: np.ndarray, dim: int, nuisance_scale: float) -> np.ndarray:
    """Hidden preference coordinates [n, d] plus nuisance, rotated by a random orthogonal Q into
    R^D so the preference subspace is not axis-aligned: [n, D] float32."""
    n, d = hidden.shape
    if d > dim:
        raise ValueError(f"dim ({dim}) must be >= the {d} hidden preference coordinates")
    nuisance = nuisance_scale * rng.standard_normal((n, dim - d))
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (np.concatenate([hidden, nuisance], axis=1) @ rotation.T).astype(np.float32)


def random_pairs(rng: np.random.Generator, n_items: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random item pairs (a, b) with b != a, uniform over the rest."""
    a = rng.integers(n_items, size=n)
    return a, (a + rng.integers(1, n_items, size=n)) % n_items


# p̄ within this of 1/2 is a tie: ties are exact in the generators' math (hard labels, equal
# type shares) and only float rounding moves them; genuine margins are orders of magnitude larger.
TIE_TOLERANCE = 1e-9


def optimal_accuracies(p: np.ndarray, p_population: np.ndarray) -> dict:
    """The ceilings every generator reports: the true model's accuracy E[max(p, 1 − p)], and that
    of the best predictor ignoring the user, which answers with the population's p̄ and, where
    p̄ = 1/2, is indifferent: a tie scores 1/2 whatever the user's p."""
    tie = np.abs(p_population - 0.5) <= TIE_TOLERANCE
    return {
        "bayes_optimal_accuracy": float(np.mean(np.maximum(p, 1.0 - p))),
        "population_optimal_accuracy": float(np.mean(np.where(tie, 0.5, np.where(p_population > 0.5, p, 1.0 - p)))),
    }


def sample_user_weights(rng: np.random.Generator, n_types: int, n_users: int, mixture: bool, concentration: float):
    """[U, K] users' weights over K types (one-hot members, or Dirichlet mixtures) and each user's
    group (its largest weight)."""
    if mixture:
        weights = rng.dirichlet(np.full(n_types, concentration), size=n_users)
    else:
        weights = np.eye(n_types)[rng.integers(n_types, size=n_users)]
    return weights, weights.argmax(axis=1)


def population_types(rng: np.random.Generator, type_params: np.ndarray, user_group: np.ndarray, mixture: bool,
                     concentration: float) -> tuple[np.ndarray, np.ndarray]:
    """(params [P, ...], shares [P]) of the population the best non-personalized predictor averages
    over: the K types with their shares among users for members; 256 sampled Dirichlet-mixture
    users, equally weighted, for mixtures."""
    K = len(type_params)
    if mixture:
        population = rng.dirichlet(np.full(K, concentration), size=256) @ type_params
        return population, np.full(len(population), 1.0 / len(population))
    return type_params, np.bincount(user_group, minlength=K) / len(user_group)


def make_ideal_point(config: IdealPointConfig) -> PreferenceDataset:
    """Generates the dataset in memory; `pluralign.data.write_dataset` puts it on disk."""
    if config.latent_dim > config.dim:
        raise ValueError(f"latent_dim ({config.latent_dim}) must be <= dim ({config.dim})")
    if config.n_items < 2 or config.comparisons_per_user < 1:
        raise ValueError("need at least 2 items and 1 comparison per user")
    rng = np.random.default_rng(config.seed)
    D, d, K, U = config.dim, config.latent_dim, config.n_groups, config.n_users

    z = rng.standard_normal((config.n_items, d))  # hidden item coordinates
    items = embed_hidden(rng, z, D, config.nuisance_scale)  # [n_items, D]

    group_points = config.group_spread * rng.standard_normal((K, d))  # [K, d]
    user_weights, user_group = sample_user_weights(rng, K, U, config.mixture, config.mixture_concentration)  # [U, K]
    user_ideal = user_weights @ group_points  # [U, d]

    n = U * config.comparisons_per_user
    user = np.repeat(np.arange(U), config.comparisons_per_user)
    a, b = random_pairs(rng, config.n_items, n)
    p = _preference_prob(z, user_ideal[user], a, b, config.noise_temperature)  # [n]
    label = (rng.random(n) < p).astype(np.float32)

    # Population-average preference for each comparison: exact over groups for members;
    # a Monte-Carlo average over 256 sampled users for mixtures.
    population, population_weights = population_types(
        rng, group_points, user_group, config.mixture, config.mixture_concentration
    )
    p_bar = sum(
        w * _preference_prob(z, point[None, :], a, b, config.noise_temperature)
        for w, point in zip(population_weights, population)
    )
    truth = {
        **optimal_accuracies(p, p_bar),
        "user_group": user_group.astype(int).tolist(),
        "generator": dataclasses.asdict(config),
    }
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=label)
    meta = {"name": config.name, "n_users": U, "source": "pluralign.data.synthetic.make_ideal_point", "truth": truth}
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)
