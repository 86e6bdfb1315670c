"""PAL: pluralistic alignment through mixtures of ideal points (docs/design/equations.md).

Follows "PAL: Sample-Efficient Personalized Reward Modeling for Pluralistic
Alignment" (Chen et al., ICLR 2025; RamyaLab/pluralistic-alignment). Both variants
share K prototypes and give user u mixture weights w_u = softmax(W_u); the user
state φ_u is the logit vector W_u ∈ R^K.

PAL-A (ideal point):
    f_θ: R^D → R^d,  prototypes P ∈ R^{K×d},  a_u = Σ_k w_uk P_k
    s_u(y) = −‖f(e_y) − a_u‖²,   P(a ≻ b | u) = σ(τ·(s_u(a) − s_u(b)))

PAL-B (mixture of prompt-conditioned ideal points):
    f(e_y) ∈ R^d,  K prompt projectors g_k(e_x) ∈ R^d,  u_u(x) = Σ_k w_uk g_k(e_x)
    s_u(x, y) = exp(t)·cos(f(e_y), u_u(x)),   exp(t) capped at `max_logit_scale`

Deviations from the reference code, on purpose: one pooled vector per text (frozen
embeddings) rather than per-token features; the K prompt projectors are one batched
contraction (a [K, D, d] weight) instead of K modules; τ is learned (log-parametrised)
rather than fixed, which only rescales f and makes the sharpness fit the data.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import MLP, Dims, NullPrompt, PairEmbeddings, PreferenceModel
from pluralign.numerics import unit


@dataclasses.dataclass
class PALConfig:
    name: str = "pal_a"
    n_prototypes: int = 3  # K
    latent_dim: int = 8  # d
    hidden: list[int] = dataclasses.field(default_factory=list)  # f_θ's hidden layers; [] = linear
    user_init_scale: float = 0.1  # std of the initial W_u; breaks the symmetry between prototypes
    max_logit_scale: float = 100.0  # PAL-B: cap on exp(t), as in CLIP


def mixture_logit_table(n_users: int, n_prototypes: int, init_scale: float, rngs: nnx.Rngs) -> nnx.Param:
    """W ∈ R^{n_users × K}, user u's mixture weights' logits (w_u = softmax(W_u)); a small random
    init breaks the symmetry between prototypes. Shared with personalized GPM."""
    return nnx.Param(init_scale * jax.random.normal(rngs.params(), (n_users, n_prototypes)))


def average_mixture_logits(table: jax.Array, users: jax.Array | None = None) -> jax.Array:
    """[K] the average user's weights w̄ = mean_u softmax(W_u) among `users` (None = every row), as
    logits log w̄ (softmax is shift-invariant). Rows of users never trained on keep their random
    init: callers pass the seen users."""
    logits = table if users is None else table[users]
    return jnp.log(jax.nn.softmax(logits, axis=-1).mean(axis=0))


def centred_logits(user_state: jax.Array) -> jax.Array:
    """softmax(W + c) = softmax(W): centred logits are a mixture state's identifiable part."""
    return user_state - user_state.mean(axis=-1, keepdims=True)


class _PALBase(PreferenceModel):
    logit_is_reward_difference = True

    @classmethod
    def state_dim(cls, config: PALConfig, dims: Dims) -> int:
        return config.n_prototypes  # K

    def __init__(self, config: PALConfig, dims: Dims, *, rngs: nnx.Rngs):
        self.user_state_dim = self.state_dim(config, dims)
        self.item_map = MLP(dims.dim, tuple(config.hidden), config.latent_dim, rngs=rngs)  # f_θ
        self.user_mixture_logits = mixture_logit_table(dims.n_users, config.n_prototypes, config.user_init_scale, rngs)  # W

    def user_table_state(self, users):
        return self.user_mixture_logits[...][users]  # [B, K]

    def canonical_user_state(self, user_state):
        return centred_logits(user_state)

    def population_user_state(self, users=None):
        return average_mixture_logits(self.user_mixture_logits[...], users)  # [K]

    def describe_user_states(self, states):
        weights = jax.nn.softmax(states, axis=-1)
        return {
            "mixture_weights": (weights, "w_u = softmax(W_u) ∈ Δ^{K−1}: how much user u follows each of the K prototypes."),
            "mixture_logits": (states, "W_u ∈ R^K, the fitted user state (mixture weights' logits; shift-invariant)."),
        }


class PALA(_PALBase):
    """PAL-A: a user's ideal point is a convex combination of K prototype points."""

    def __init__(self, config: PALConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, rngs=rngs)
        self.prototypes = nnx.Param(jax.random.normal(rngs.params(), (config.n_prototypes, config.latent_dim)))
        self.log_temperature = nnx.Param(jnp.zeros(()))  # log τ

    def describe_user_states(self, states):
        spaces = super().describe_user_states(states)
        # A single, prompt-independent ideal point per user.
        spaces["ideal_points"] = (
            jax.nn.softmax(states, axis=-1) @ self.prototypes[...],
            "a_u = Σ_k w_uk P_k ∈ R^d: user u's ideal point in the learned item space f_θ(e_y); "
            "a response scores −τ‖f(e_y) − a_u‖².",
        )
        return spaces

    def _ideal_point(self, user_state):
        return jax.nn.softmax(user_state, axis=-1) @ self.prototypes[...]  # [B, K] @ [K, d] -> [B, d]

    def pair_features(self, pair: PairEmbeddings):
        return self.item_map(pair.e_a), self.item_map(pair.e_b)  # [B, d] each

    def pair_logits(self, user_state, features):
        f_a, f_b = features
        ideal = self._ideal_point(user_state)  # [B, d]
        s_a = -jnp.sum(jnp.square(f_a - ideal), axis=-1)  # [B]
        s_b = -jnp.sum(jnp.square(f_b - ideal), axis=-1)
        return jnp.exp(self.log_temperature[...]) * (s_a - s_b)

    def user_logits(self, user_state, features):
        # −‖f_a − a‖² + ‖f_b − a‖² = ‖f_b‖² − ‖f_a‖² + 2 a·(f_a − f_b): the ideal point a once, and
        # terms of the pair alone, which a few-shot fit's loop computes once (XLA hoists them).
        f_a, f_b = features  # [k, d]
        ideal = self._ideal_point(user_state)  # [d]
        s = jnp.sum(jnp.square(f_b), axis=-1) - jnp.sum(jnp.square(f_a), axis=-1) + 2.0 * ((f_a - f_b) @ ideal)
        return jnp.exp(self.log_temperature[...]) * s

    def reward(self, user_state, e_x, has_prompt, e_y):
        del e_x, has_prompt  # PAL-A's ideal point does not depend on the prompt
        ideal = self._ideal_point(user_state)
        return -jnp.exp(self.log_temperature[...]) * jnp.sum(jnp.square(self.item_map(e_y) - ideal), axis=-1)


class PALB(_PALBase):
    """PAL-B: a user's preferred direction is a mixture of K prompt-conditioned directions."""

    def __init__(self, config: PALConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, rngs=rngs)
        self.null_prompt = NullPrompt(dims.dim, rngs=rngs)
        K, D, d = config.n_prototypes, dims.dim, config.latent_dim
        # g_k(e_x) = e_x G_k + c_k for all k in one contraction.
        self.prompt_maps = nnx.Param(jax.random.normal(rngs.params(), (K, D, d)) / math.sqrt(D))
        self.prompt_bias = nnx.Param(jax.random.normal(rngs.params(), (K, d)))
        self.logit_scale = nnx.Param(jnp.asarray(math.log(10.0)))  # t
        self.max_log_scale = math.log(config.max_logit_scale)

    def _prompt_directions(self, e_x, has_prompt):
        e_x = self.null_prompt(e_x, has_prompt)  # [B, D]
        return jnp.einsum("bD,kDd->bkd", e_x, self.prompt_maps[...]) + self.prompt_bias[...][None]  # [B, K, d]

    def _scale(self):
        return jnp.exp(jnp.minimum(self.logit_scale[...], self.max_log_scale))

    @staticmethod
    def _user_direction(user_state, directions):
        u = jnp.einsum("bk,bkd->bd", jax.nn.softmax(user_state, axis=-1), directions)  # [B, d]
        return unit(u, 1e-6)

    def pair_features(self, pair: PairEmbeddings):
        directions = self._prompt_directions(pair.e_x, pair.has_prompt)
        return unit(self.item_map(pair.e_a), 1e-6), unit(self.item_map(pair.e_b), 1e-6), directions

    def pair_logits(self, user_state, features):
        f_a, f_b, directions = features
        u = self._user_direction(user_state, directions)  # [B, d]
        return self._scale() * jnp.sum((f_a - f_b) * u, axis=-1)  # cos(f_a, u) − cos(f_b, u), scaled

    def user_logits(self, user_state, features):
        # With u = Σ_k w_k g_k: (f_a − f_b)·u = w·c and ‖u‖² = wᵀ G w, c_k = (f_a − f_b)·g_k and
        # G = g gᵀ of the pair alone, which a few-shot fit's loop computes once (XLA hoists them).
        f_a, f_b, directions = features  # [k, d], [k, d], [k, K, d]
        w = jax.nn.softmax(user_state, axis=-1)  # [K]
        c = jnp.einsum("kd,kKd->kK", f_a - f_b, directions)
        gram = jnp.einsum("kId,kJd->kIJ", directions, directions)
        norm = jnp.sqrt(jnp.maximum(jnp.einsum("I,kIJ,J->k", w, gram, w), 0.0))
        return self._scale() * (c @ w) / (norm + 1e-6)  # as `unit(u, 1e-6)`

    def reward(self, user_state, e_x, has_prompt, e_y):
        u = self._user_direction(user_state, self._prompt_directions(e_x, has_prompt))
        return self._scale() * jnp.sum(unit(self.item_map(e_y), 1e-6) * u, axis=-1)
