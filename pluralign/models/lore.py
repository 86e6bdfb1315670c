"""Population-anchored low-rank personal rewards (LoRe-style; DESIGN §4).

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

`formulation: lore` is LoRe's own model without the shared reward, r_u = w_uᵀ B_θ with w_u
unconstrained (the paper's simplex constraint is not implemented); its population state is then
the seen users' mean weight vector, not 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import MLP, Dims, PairEmbeddings, gather, weighted_metrics
from pluralign.models.bt import BT, BTConfig

FORMULATIONS = ("residual", "lore")


@dataclasses.dataclass
class LoReConfig(BTConfig):
    name: str = "lore"
    rank: int = 4  # dimension of w_u and of the basis B_θ
    basis_hidden: list[int] = dataclasses.field(default_factory=list)  # B_θ's hidden layers; [] = linear
    weight_prior_strength: float = 0.01  # λ: Gaussian prior ½λ‖w_u‖² per comparison (and on ΔB)
    formulation: str = "residual"  # residual: r_θ + wᵀB | lore: wᵀB (LoRe without a shared reward)
    user_init_scale: float = 0.01  # std of the initial w_u

    def __post_init__(self):
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"model.formulation must be one of {list(FORMULATIONS)}, got {self.formulation!r}")
        if self.rank < 1 or self.weight_prior_strength < 0:
            raise ValueError(f"model.rank must be >= 1 and model.weight_prior_strength >= 0, got {self.rank}, {self.weight_prior_strength}")


class LoRe(BT):
    """BT's shared reward (inherited: null prompt, reward MLP, its pair features) + w_uᵀ B_θ."""

    logit_is_reward_difference = True

    @classmethod
    def state_dim(cls, config: LoReConfig, dims: Dims) -> int:
        return config.rank

    def __init__(self, config: LoReConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, rngs=rngs)
        self.user_state_dim = self.state_dim(config, dims)
        self.residual = config.formulation == "residual"
        self.weight_prior_strength = config.weight_prior_strength
        self.basis_net = MLP(2 * dims.dim, tuple(config.basis_hidden), config.rank, rngs=rngs)  # B_θ
        self.user_weights = nnx.Param(config.user_init_scale * jax.random.normal(rngs.params(), (dims.n_users, config.rank)))

    def basis(self, e_x: jax.Array, has_prompt: jax.Array, e_y: jax.Array) -> jax.Array:
        """[B, D], [B], [B, D] -> B_θ(x, y) [B, rank]."""
        return self.basis_net(jnp.concatenate([self.null_prompt(e_x, has_prompt), e_y], axis=-1))

    def pair_features(self, pair: PairEmbeddings):
        shared = super().pair_features(pair)  # [B] r_θ(x, a) − r_θ(x, b), BT's own computation
        basis_diff = self.basis(pair.e_x, pair.has_prompt, pair.e_a) - self.basis(pair.e_x, pair.has_prompt, pair.e_b)
        return shared, basis_diff  # [B], [B, rank]

    def pair_logits(self, user_state, features):
        shared, basis_diff = features
        personal = jnp.sum(user_state * basis_diff, axis=-1)  # [B] w_uᵀ (B(a) − B(b))
        return shared + personal if self.residual else personal

    def reward(self, user_state, e_x, has_prompt, e_y):
        personal = jnp.sum(user_state * self.basis(e_x, has_prompt, e_y), axis=-1)
        return super().reward(user_state, e_x, has_prompt, e_y) + personal if self.residual else personal

    def rewards(self, user_state, e_x, has_prompt, e_y):
        B, N, D = e_y.shape
        rep = lambda x: jnp.repeat(x, N, axis=0)  # noqa: E731
        personal = jnp.sum(rep(user_state) * self.basis(rep(e_x), rep(has_prompt), e_y.reshape(B * N, D)), axis=-1)
        personal = personal.reshape(B, N)
        return super().rewards(user_state, e_x, has_prompt, e_y) + personal if self.residual else personal

    def user_table_state(self, users):
        return self.user_weights[...][users]  # [B, rank]

    def population_user_state(self, users=None):
        if self.residual:  # w = 0 is the population (BT) model by construction
            return jnp.zeros((self.user_state_dim,), jnp.float32)
        weights = self.user_weights[...] if users is None else self.user_weights[...][users]
        return weights.mean(axis=0)  # [rank]

    def loss(self, tables, batch, rng):
        del rng
        features = self.pair_features(gather(tables, batch))
        w = self.user_table_state(batch.user)  # [B, rank]
        metrics = weighted_metrics(self.pair_logits(w, features), batch.label, batch.weight)
        # Gaussian prior on each comparison's user weights and on its basis difference.
        total_weight = jnp.maximum(batch.weight.sum(), 1e-9)
        penalty = 0.5 * (jnp.sum(jnp.square(w), axis=-1) + jnp.sum(jnp.square(features[1]), axis=-1))  # [B]
        metrics["weight_penalty"] = jnp.sum(batch.weight * penalty) / total_weight
        return metrics["loss"] + self.weight_prior_strength * metrics["weight_penalty"], metrics
