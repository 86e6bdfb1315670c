"""Linear baselines: a global linear reward, and the same plus a per-user linear deviation
shrunk to it (docs/models/bt-linear.md). The first thing a statistician fits: logistic
regression on embedding differences, pooled, and hierarchical with a Gaussian prior.

linear_bt (global, no user state):
    r(y) = wᵀ e_y,    P(a ≻ b) = σ(wᵀ(e_a − e_b))

linear_personal (user state δ_u ∈ R^d, the user's deviation from the global weights):
    r_u(y) = wᵀ e_y + δ_uᵀ P e_y / √d = (w + Pᵀδ_u/√d)ᵀ e_y,    δ_u ~ N(0, σ²I)
    P(a ≻ b | u) = σ(wᵀ(e_a − e_b) + δ_uᵀ P(e_a − e_b) / √d)

P ∈ R^{d×D} is the identity when D ≤ `projection_dim` (then r_u(y) = (w + δ_u/√D)ᵀ e_y) and
otherwise a fixed Gaussian random projection (entries N(0, 1/d), from `projection_seed`; not
trained and not stored: it is recomputed from the seed, so a saved model loads exactly). The
1/√d keeps a unit of state worth O(1) logit whatever the embedding size, so the protocol's
prior strengths (eval.prior_strengths, the same grid for every model) are on the right scale:
without it a Gaussian prior of strength 1-10 on D = 64 raw weights let one shot overfit (the
1-shot accuracy fell 0.03 below the 0-shot one on ideal_point). The global w stays in the
full space, so at δ_u = 0 linear_personal *is* linear_bt.

Seen users' δ_u are learned jointly with w, the Gaussian prior as an L2 penalty: the training
objective is the mean over comparisons i of ℓ_i + (λ/2)‖δ_{u_i}‖² (λ = `user_l2`), i.e. MAP
under δ_u ~ N(0, I/(λ n_u)) for a user with n_u training comparisons.

λ is small (0.001) because the seen δ_u are the empirical-Bayes prior's samples (base.empirical_prior):
they must keep the spread users really have. A comparison's Fisher information along one state
direction is only ~p(1−p)·Var(P Δe)/d ≈ 0.01 (d = 32, unit-variance embeddings), so the old
λ = 0.1 per comparison outweighed the evidence ~10:1 and shrank every seen δ_u ~10-fold: the fitted
prior was ~30× too narrow in variance (the evaluation's fitted precision multiplier came out
0.04–0.06 at k = 5–20 on data=shared_plus_low_rank, 0.3 at k = 1; the old grid stopped at 0.1, so
few-shot inference could hardly move: flat at the global model). At λ = 0.001 the seen-user
accuracy rises 0.794 → 0.812 there and the fitted multiplier is 0.4–1.3, i.e. the prior's scale
is right to within the fit's range. What remains is its *shape*: from ~48 comparisons for 32
coefficients, each seen δ_u carries estimation noise in every direction, and the seen states'
scatter (top eigenvalues 1.5, 1.2, 1.0 for the 3 planted directions, a bulk of 29 at ~0.25) puts
~2/3 of the prior's trace where users do not differ; few shots then spend part of their evidence
there. A low-rank model (lore) does not have this problem. Unseen users are fitted
few-shot by the shared protocol (`PreferenceModel.infer_user`: MAP around the population state,
the seen users' mean deviation δ̄ ≈ 0, under the protocol's prior strength, chosen on unseen-val
users); the head is linear in the state, so that MAP problem is convex.

The prompt is ignored, on purpose: in a linear reward any term in e_x alone cancels from
r(x, a) − r(x, b), and a prompt–response interaction would be bilinear (D² weights), no longer
the linear baseline.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import Dims, PairEmbeddings, PreferenceModel, mean_preference_loss


@dataclasses.dataclass
class LinearConfig:
    name: str = "linear_bt"
    # linear_personal: δ_u ∈ R^d with d = min(D, projection_dim); a random projection above it.
    projection_dim: int = 256
    projection_seed: int = 0
    user_l2: float = 0.001  # λ: per-comparison weight of (1/2)‖δ_u‖² for seen users (see the docstring)
    user_init_scale: float = 0.01  # std of the initial δ_u (any small value; the penalty pulls it to 0)

    def __post_init__(self):
        if self.projection_dim < 1:
            raise ValueError(f"model.projection_dim must be >= 1, got {self.projection_dim}")
        if self.user_l2 < 0:
            raise ValueError(f"model.user_l2 must be >= 0, got {self.user_l2}")


class LinearBT(PreferenceModel):
    """Global linear reward r(y) = wᵀ e_y; no user state."""

    logit_is_reward_difference = True
    user_state_dim = 0

    def __init__(self, config: LinearConfig, dims: Dims, *, rngs: nnx.Rngs):
        del config, rngs  # a convex problem: start at w = 0
        self.weights = nnx.Param(jnp.zeros((dims.dim,), jnp.float32))  # w [D]

    def pair_features(self, pair: PairEmbeddings) -> jax.Array:
        return (pair.e_a - pair.e_b) @ self.weights[...]  # [B]

    def pair_logits(self, user_state, features):
        del user_state
        return features

    def reward(self, user_state, e_x, has_prompt, e_y):
        del user_state, e_x, has_prompt
        return e_y @ self.weights[...]  # [B]


class LinearPersonal(PreferenceModel):
    """Global linear reward plus a per-user linear deviation δ_u on projected embeddings."""

    logit_is_reward_difference = True

    @classmethod
    def state_dim(cls, config: LinearConfig, dims: Dims) -> int:
        return min(dims.dim, config.projection_dim)  # d

    def __init__(self, config: LinearConfig, dims: Dims, *, rngs: nnx.Rngs):
        # w = 0 and δ ≈ 0: training starts at the population model, the prior mean.
        self.dim = dims.dim
        self.user_state_dim = self.state_dim(config, dims)
        self.projection_seed = config.projection_seed
        self.user_l2 = config.user_l2
        self.weights = nnx.Param(jnp.zeros((dims.dim,), jnp.float32))  # w [D]
        self.user_deviations = nnx.Param(  # δ [n_users, d]
            config.user_init_scale * jax.random.normal(rngs.params(), (dims.n_users, self.user_state_dim)))

    def project(self, e: jax.Array) -> jax.Array:
        """[..., D] -> [..., d]: P e / √d (P the identity when d = D)."""
        scale = 1.0 / math.sqrt(self.user_state_dim)
        if self.user_state_dim == self.dim:
            return scale * e
        key = jax.random.PRNGKey(self.projection_seed)
        projection = jax.random.normal(key, (self.dim, self.user_state_dim)) / math.sqrt(self.user_state_dim)  # Pᵀ [D, d]
        return scale * (e @ projection)

    def pair_features(self, pair: PairEmbeddings):
        diff = pair.e_a - pair.e_b  # [B, D]
        return diff @ self.weights[...], self.project(diff)  # [B], [B, d]

    def pair_logits(self, user_state, features):
        global_part, projected = features
        return global_part + jnp.sum(user_state * projected, axis=-1)  # [B]

    def reward(self, user_state, e_x, has_prompt, e_y):
        del e_x, has_prompt
        return e_y @ self.weights[...] + jnp.sum(user_state * self.project(e_y), axis=-1)  # [B]

    def user_table_state(self, users):
        return self.user_deviations[...][users]  # [B, d]

    def population_user_state(self, users=None):
        # The average seen user's deviation δ̄ (≈ 0 under the prior, but the penalty is per
        # comparison, so the users' mean need not sit exactly at 0): at 0 shots a new user gets
        # the average seen user's reward (w + Pᵀδ̄)ᵀe_y, the best linear population predictor.
        deviations = self.user_deviations[...] if users is None else self.user_deviations[...][users]
        return deviations.mean(axis=0)  # [d]

    def loss(self, tables, batch, rng):
        del rng
        loss, metrics = mean_preference_loss(self, tables, batch)
        penalty = jnp.sum(jnp.square(self.user_deviations[...][batch.user]), axis=-1)  # [B] ‖δ_{u_i}‖²
        prior = 0.5 * self.user_l2 * jnp.sum(penalty * batch.weight) / jnp.maximum(batch.weight.sum(), 1e-9)
        return loss + prior, metrics
