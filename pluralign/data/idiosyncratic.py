"""Idiosyncratic synthetic users: a shared reward plus item-level taste no embedding can predict.

On dense rating data a user's few-shot gain can come from remembering how they judged the
very items that reappear in the query, rather than from learning a taste that transfers
to new items (docs/design/evaluation-protocol.md, `item_disjoint`). This generator (`data=idiosyncratic`) plants both
kinds of personal signal, so the two few-shot modes can be told apart against known ceilings:

    r_u(i) = β_u · ( s · ⟨w₀, z_i⟩ + ⟨v_u, B z_i⟩ + ε_{u,i} ),     P(a ≻ b | u) = σ(r_u(a) − r_u(b))

with z_i ∈ R^{1+rank} the item's hidden coordinates (embedded into R^D with nuisance
directions by `synthetic.embed_hidden`), w₀ the shared direction and s = `shared_scale` its
weight, B the `rank` deviation directions, v_u ~ N(0, σ² I_rank) the user's small transferable
part (σ = `deviation_scale`), ε_{u,i} ~ N(0, τ²) i.i.d. per (user, item) (τ = `item_effect_scale`):
a random effect of the item *for this user*, fixed across all of that user's comparisons,
independent of the embedding and of every other user; and β_u ~ LogNormal with mean 1 and
log-std `sharpness_spread` (0 by default: every user equally noisy).

Items are reused across users as in dense rating data: a common pool of `n_items`; each user
sees `items_per_user` of them (0 = the whole pool) and compares `comparisons_per_user` random
pairs among those. There are no prompts. The defaults give each user ≈ 29 pool pairs in
`item_disjoint` mode and ≈ 60 in `random` mode, so k = 20 is reached in both.

`meta["truth"]` holds three ceilings, each E[accuracy] on the dataset's comparisons of the
best predictor that knows what its name says (`synthetic.optimal_accuracies`):

- `bayes_optimal_accuracy`: the true per-user model, ε included.
- `transferable_optimal_accuracy`: knows the shared reward and v_u but not ε. Its predictive
  probability E_ε σ(β_u(m + ε_a − ε_b)) has the sign of m = s⟨w₀, z_a − z_b⟩ + ⟨v_u, B(z_a − z_b)⟩
  (ε_a − ε_b is symmetric about zero), and the sign is all accuracy needs.
- `population_optimal_accuracy`: ignores the user. The population's average preference
  P̄(a ≻ b) = E_u[P(a ≻ b | u)] has the sign of the shared term alone (v_u and ε are symmetric
  about zero), so this is exact, with no Monte-Carlo users.

Which ceiling applies in which few-shot mode (`eval.modes`):

- `item_disjoint`: no query item is in the user's support, and other users' ε say nothing
  about this user's, so `transferable_optimal_accuracy` is the ceiling at every k.
- `random`: support and query share items, so a model that remembers how this user judged an
  item can learn its ε and climb from `transferable_optimal_accuracy` towards
  `bayes_optimal_accuracy` on the items that reappear (at small k each item is seen in about
  one support pair, so far from all the way). A random-mode gain above the transferable
  ceiling is item memory, not taste.

With the defaults (nothing transfers) they are ≈ 0.86, ≈ 0.75 and ≈ 0.75; with
`deviation_scale=0.6`, ≈ 0.86, ≈ 0.77 and ≈ 0.74. The truth also holds every user's
weights v_u, sharpness β_u, the items they see and their ε on those items.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pluralign.data.format import Comparisons, PreferenceDataset
from pluralign.data.low_rank import sample_sharpness
from pluralign.data.synthetic import sigmoid, embed_hidden, optimal_accuracies, random_pairs


@dataclasses.dataclass
class IdiosyncraticConfig:
    kind: str = "idiosyncratic"  # which generator; `pluralign.data.sources` dispatches on it
    name: str = "idiosyncratic"
    n_users: int = 300
    n_items: int = 200  # the common pool every user draws from
    items_per_user: int = 40  # items a user sees (pairs are drawn among them); 0 = the whole pool
    comparisons_per_user: int = 120
    dim: int = 32  # D, the embedding size
    rank: int = 2  # directions of the transferable personal part
    shared_scale: float = 2.0  # s: weight of the shared reward direction
    # σ: std of each user's weight on each deviation direction. 0 (default): nothing about a user
    # transfers to new items, so in item_disjoint mode there is no gain to find and a personalized
    # model must stay at the population; 0.6 gives a small transferable part (+~2.5 points of ceiling).
    deviation_scale: float = 0.0
    item_effect_scale: float = 1.5  # τ: std of the per-(user, item) effect ε that embeddings cannot predict
    sharpness_spread: float = 0.0  # log-std of β_u (mean 1); 0 = every user equally noisy
    nuisance_scale: float = 1.0  # std of the preference-irrelevant embedding directions
    seed: int = 0

    def __post_init__(self):
        if self.n_users < 1 or self.comparisons_per_user < 1:
            raise ValueError("idiosyncratic needs n_users, comparisons_per_user >= 1")
        if self.n_items < 2:
            raise ValueError(f"data.n_items must be >= 2, got {self.n_items}")
        if self.items_per_user != 0 and not 2 <= self.items_per_user <= self.n_items:
            raise ValueError(f"data.items_per_user must be 0 (the whole pool) or in [2, n_items={self.n_items}], "
                             f"got {self.items_per_user}")
        if not 0 <= self.rank < self.dim:
            raise ValueError(f"data.rank must be in [0, dim={self.dim}), got {self.rank}")
        if min(self.shared_scale, self.deviation_scale, self.item_effect_scale, self.sharpness_spread) < 0:
            raise ValueError("data.shared_scale, deviation_scale, item_effect_scale and sharpness_spread must be >= 0")


def seen_items(rng: np.random.Generator, n_users: int, n_items: int, items_per_user: int) -> np.ndarray:
    """[U, m] the distinct items each user sees (m = items_per_user; the whole pool for 0)."""
    if items_per_user == 0:
        return np.tile(np.arange(n_items), (n_users, 1))
    return np.argsort(rng.random((n_users, n_items)), axis=1)[:, :items_per_user]


def make_idiosyncratic(config: IdiosyncraticConfig) -> PreferenceDataset:
    """Generates the dataset in memory; `pluralign.data.write_dataset` puts it on disk."""
    rng = np.random.default_rng(config.seed)
    U, r, n_per = config.n_users, config.rank, config.comparisons_per_user

    # Hidden coordinates: column 0 is the shared direction w₀, columns 1..rank the deviation basis B.
    z = rng.standard_normal((config.n_items, 1 + r))
    items = embed_hidden(rng, z, config.dim, config.nuisance_scale)  # [n_items, D]
    weights = config.deviation_scale * rng.standard_normal((U, r))  # v_u
    sharpness = sample_sharpness(rng, config.sharpness_spread, U)  # β_u
    seen = seen_items(rng, U, config.n_items, config.items_per_user)  # [U, m]
    # One draw per (user, item): every comparison of u involving i uses the same ε_{u,i}.
    item_effects = config.item_effect_scale * rng.standard_normal(seen.shape)  # [U, m]

    user = np.repeat(np.arange(U), n_per)
    i, j = random_pairs(rng, seen.shape[1], U * n_per)  # positions within a user's items
    a, b = seen[user, i], seen[user, j]
    dz = z[a] - z[b]  # [n, 1 + r]
    shared = config.shared_scale * dz[:, 0]  # [n]
    transferable = shared + np.einsum("nr,nr->n", dz[:, 1:], weights[user])  # [n]
    idiosyncratic = item_effects[user, i] - item_effects[user, j]  # [n]
    p = sigmoid(sharpness[user] * (transferable + idiosyncratic))
    label = (rng.random(len(p)) < p).astype(np.float32)

    # Only the signs of the two partial predictors matter (see the docstring); σ(·) keeps a zero a tie.
    ceilings = optimal_accuracies(p, sigmoid(shared))
    transferable_ceiling = optimal_accuracies(p, sigmoid(transferable))["population_optimal_accuracy"]
    truth = {
        **ceilings,
        "transferable_optimal_accuracy": transferable_ceiling,
        "user_weights": np.round(weights, 5).tolist(),  # v_u [U][rank]
        "user_sharpness": np.round(sharpness, 5).tolist(),  # β_u [U]
        "user_items": seen.tolist(),  # [U][m] the items each user sees
        "user_item_effects": np.round(item_effects, 5).tolist(),  # ε_{u, user_items[u][t]} [U][m]
        "generator": dataclasses.asdict(config),
    }
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=label)
    meta = {"name": config.name, "n_users": U, "source": "pluralign.data.idiosyncratic.make_idiosyncratic",
            "truth": truth}
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)
