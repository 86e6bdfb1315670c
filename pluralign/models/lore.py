"""Population-anchored low-rank personal rewards (LoRe-style; docs/design/equations.md).

Follows "LoRe: Personalizing LLMs via Low-Rank Reward Modeling" (Bose et al., 2025;
facebookresearch/LoRe): a user's reward is a combination of a few shared basis rewards.
Here, by default, the basis is a *residual* on top of a shared Bradley–Terry reward:

    r_u(x, y) = r_θ(x, y) + w_uᵀ B_θ(x, y),    r_θ = BT's MLP([e_x; e_y]),  B_θ: [e_x; e_y] → R^rank
    P(a ≻ b | x, u) = σ(r_u(x, a) − r_u(x, b))

With w_u = 0 the model *is* the population BT model (same network, same code path), so a
new user starts exactly at BT and moves only as far as their answers warrant. Seen users'
weights w_u are a learned table, trained jointly with θ under a Gaussian prior:
`weight_prior_strength` · ½‖w_u‖² per comparison of u (a prior of precision λ·n_u on a user
with n_u training pairs); the same penalty on the basis difference ½‖B(a) − B(b)‖² keeps the
factorisation from trading a tiny w for a huge basis (as L2 on both factors in matrix
factorisation).

`residual_dim > 0` adds a full-rank per-user linear term beside the learned basis
(`pluralign.models.residual`): the state is [w_u (rank); v_u (d)], d = min(D, residual_dim), and

    r_u(x, y) = r_θ(x, y) + w_uᵀ B_θ(x, y) + v_uᵀ P e_y / √d

with P a fixed (whitened-PCA) projection of the item embeddings, fitted before training
(`prepare_params`), and v_u under its own prior ½λ_v‖v_u‖² per comparison
(`residual_prior_strength`). The basis captures the few directions users share; v_u whatever
a user's taste has beyond them: with 20 answers a user can use more than `rank` directions,
and the few-shot prior's fitted scale and the gate (`pluralign.evaluate.shrinkage`) keep 1-2
answers from spending it. It is on by default (d = 64); `residual_dim = 0` is the model
without it (LoRe's own), unchanged. The two blocks are the prior's `residual_block`: the evaluation
fits the v block's prior variance relative to w's (`base.empirical_prior`'s `residual_ratio`), as
joint training shrinks the seen v_u more than a new user's answers warrant.

`formulation: lore` is LoRe's own model without the shared reward, r_u = w_uᵀ B_θ with w_u
unconstrained (the paper's simplex constraint is not implemented); its population state is then
the seen users' mean weight vector, not 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.models.base import MLP, Dims, PairEmbeddings, gather, weighted_metrics
from pluralign.models.bt import BT, BTConfig, PopulationStage
from pluralign.models.residual import FixedProjection, prepare_projection, projected_dim

FORMULATIONS = ("residual", "lore")


@dataclasses.dataclass
class LoReConfig(BTConfig):
    name: str = "lore"
    rank: int = 4  # dimension of w_u and of the basis B_θ
    basis_hidden: list[int] = dataclasses.field(default_factory=list)  # B_θ's hidden layers; [] = linear
    weight_prior_strength: float = 0.01  # λ: Gaussian prior ½λ‖w_u‖² per comparison (and on ΔB)
    formulation: str = "residual"  # residual: r_θ + wᵀB | lore: wᵀB (LoRe without a shared reward)
    population_stage: bool = True  # train r_θ first as BT (own early stopping), then freeze it (models.bt.PopulationStage)
    user_init_scale: float = 0.01  # std of the initial w_u (and v_u)
    residual_dim: int = 64  # d of the full-rank residual v_uᵀ P e_y / √d; 0 = off (LoRe's model alone)
    residual_prior_strength: float = 0.001  # λ_v: Gaussian prior ½λ_v‖v_u‖² per comparison
    # [] = `rank` as given; else one model per rank, the lowest seen-user validation loss kept (pluralign.run)
    rank_candidates: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"model.formulation must be one of {list(FORMULATIONS)}, got {self.formulation!r}")
        if self.rank < 1 or self.weight_prior_strength < 0:
            raise ValueError(f"model.rank must be >= 1 and model.weight_prior_strength >= 0, got {self.rank}, {self.weight_prior_strength}")
        if self.residual_dim < 0 or self.residual_prior_strength < 0:
            raise ValueError(f"model.residual_dim and model.residual_prior_strength must be >= 0, "
                             f"got {self.residual_dim}, {self.residual_prior_strength}")
        candidates = list(self.rank_candidates)
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in candidates) or len(set(candidates)) < len(candidates):
            raise ValueError(f"model.rank_candidates must be distinct positive integers, got {candidates}")


class LoRe(BT):
    """BT's shared reward (inherited: null prompt, reward MLP, its pair features) + w_uᵀ B_θ."""

    logit_is_reward_difference = True

    @classmethod
    def population_stage(cls, config: LoReConfig) -> PopulationStage | None:
        if config.formulation == "residual" and config.population_stage:
            return PopulationStage(BTConfig(hidden=list(config.hidden)))
        return None

    @classmethod
    def state_dim(cls, config: LoReConfig, dims: Dims) -> int:
        return config.rank + (projected_dim(dims.dim, config.residual_dim) if config.residual_dim > 0 else 0)

    def __init__(self, config: LoReConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, rngs=rngs)
        self.user_state_dim = self.state_dim(config, dims)
        self.residual = config.formulation == "residual"
        # r_θ trained first as BT, alone: its prediction is the population's marginal (base.PreferenceModel.population_is_marginal)
        self.population_is_marginal = self.residual and config.population_stage
        self.weight_prior_strength = config.weight_prior_strength
        self.basis_net = MLP(2 * dims.dim, tuple(config.basis_hidden), config.rank, rngs=rngs)  # B_θ
        self.user_weights = nnx.Param(config.user_init_scale * jax.random.normal(rngs.params(), (dims.n_users, config.rank)))
        self.rank = config.rank
        self.has_full_rank_term = config.residual_dim > 0
        if self.has_full_rank_term:
            self.residual_prior_strength = config.residual_prior_strength
            self.residual_projection = FixedProjection(dims.dim, config.residual_dim)
            self.residual_weights = nnx.Param(  # v [n_users, d]
                config.user_init_scale * jax.random.normal(rngs.params(), (dims.n_users, self.residual_projection.out_dim)))

    def basis(self, e_x: jax.Array, has_prompt: jax.Array, e_y: jax.Array) -> jax.Array:
        """[B, D], [B], [B, D] -> B_θ(x, y) [B, rank]."""
        return self.basis_net(jnp.concatenate([self.null_prompt(e_x, has_prompt), e_y], axis=-1))

    def pair_features(self, pair: PairEmbeddings):
        shared = super().pair_features(pair)  # [B] r_θ(x, a) − r_θ(x, b), BT's own computation
        basis_diff = self.basis(pair.e_x, pair.has_prompt, pair.e_a) - self.basis(pair.e_x, pair.has_prompt, pair.e_b)
        if self.has_full_rank_term:
            return shared, basis_diff, self.residual_projection(pair.e_a - pair.e_b)  # [B], [B, rank], [B, d]
        return shared, basis_diff  # [B], [B, rank]

    def pair_logits(self, user_state, features):
        shared, basis_diff = features[:2]
        personal = jnp.sum(user_state[..., : self.rank] * basis_diff, axis=-1)  # [B] w_uᵀ (B(a) − B(b))
        if self.has_full_rank_term:  # + v_uᵀ P(e_a − e_b) / √d
            personal = personal + jnp.sum(user_state[..., self.rank :] * features[2], axis=-1)
        return shared + personal if self.residual else personal

    def reward(self, user_state, e_x, has_prompt, e_y):
        personal = jnp.sum(user_state[..., : self.rank] * self.basis(e_x, has_prompt, e_y), axis=-1)
        if self.has_full_rank_term:
            personal = personal + jnp.sum(user_state[..., self.rank :] * self.residual_projection(e_y), axis=-1)
        return super().reward(user_state, e_x, has_prompt, e_y) + personal if self.residual else personal

    def rewards(self, user_state, e_x, has_prompt, e_y):
        B, N, D = e_y.shape
        rep = lambda x: jnp.repeat(x, N, axis=0)  # noqa: E731
        w = user_state[..., : self.rank]
        personal = jnp.sum(rep(w) * self.basis(rep(e_x), rep(has_prompt), e_y.reshape(B * N, D)), axis=-1)
        personal = personal.reshape(B, N)
        if self.has_full_rank_term:
            personal = personal + jnp.einsum("bs,bns->bn", user_state[..., self.rank :], self.residual_projection(e_y))
        return super().rewards(user_state, e_x, has_prompt, e_y) + personal if self.residual else personal

    def residual_block(self):
        if self.has_full_rank_term:  # v_u: the last d coordinates, after w_u
            return np.arange(self.user_state_dim) >= self.rank
        return None

    def user_table_state(self, users):
        if self.has_full_rank_term:  # [B, rank + d]: [w_u; v_u]
            return jnp.concatenate([self.user_weights[...][users], self.residual_weights[...][users]], axis=-1)
        return self.user_weights[...][users]  # [B, rank]

    def population_user_state(self, users=None):
        if self.residual:  # w = 0 (and v = 0) is the population (BT) model by construction
            return jnp.zeros((self.user_state_dim,), jnp.float32)
        if self.has_full_rank_term:
            states = self.user_table_state(jnp.arange(self.user_weights[...].shape[0]) if users is None else users)
            return states.mean(axis=0)  # [rank + d]
        weights = self.user_weights[...] if users is None else self.user_weights[...][users]
        return weights.mean(axis=0)  # [rank]

    def loss(self, tables, batch, rng):
        del rng
        features = self.pair_features(gather(tables, batch))
        state = self.user_table_state(batch.user)  # [B, S]
        w = state[:, : self.rank]  # [B, rank]
        metrics = weighted_metrics(self.pair_logits(state, features), batch.label, batch.weight)
        # Gaussian prior on each comparison's user weights and on its basis difference.
        total_weight = jnp.maximum(batch.weight.sum(), 1e-9)
        penalty = 0.5 * (jnp.sum(jnp.square(w), axis=-1) + jnp.sum(jnp.square(features[1]), axis=-1))  # [B]
        metrics["weight_penalty"] = jnp.sum(batch.weight * penalty) / total_weight
        objective = metrics["loss"] + self.weight_prior_strength * metrics["weight_penalty"]
        if self.has_full_rank_term:  # ... and on the full-rank residual's weights
            v_penalty = 0.5 * jnp.sum(jnp.square(state[:, self.rank :]), axis=-1)  # [B]
            metrics["residual_penalty"] = jnp.sum(batch.weight * v_penalty) / total_weight
            objective = objective + self.residual_prior_strength * metrics["residual_penalty"]
        return objective, metrics

    @classmethod
    def prepare_params(cls, config: LoReConfig, dataset, train_items, params):
        """With the full-rank residual: fits its fixed projection P on `train_items` (whitened PCA,
        `pluralign.models.residual`). Otherwise nothing."""
        if config.residual_dim == 0:
            return params, None
        params["residual_projection"], summary = prepare_projection(
            params["residual_projection"], dataset, train_items, config.residual_dim)
        return params, summary
