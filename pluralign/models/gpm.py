"""GPM: general preference embeddings, which can fit cyclic preferences (docs/design/equations.md).

Follows "Beyond Bradley-Terry Models: A General Preference Model for LM Alignment"
(Zhang et al., 2024; general-preference/general-preference-model), on frozen embeddings.
A response y to prompt x is embedded as k two-dimensional blocks

    v(x, y) = MLP([e_x; e_y]) ∈ R^{2k},   optionally v ← v / ‖v‖            (L2 normalisation)
    R^≻ = blockdiag([[0, −1], [1, 0]] × k),   D_λ = blockdiag(λ_l I_2),   λ(x) ∈ R^k_{≥0}
    s(a ≻ b | x) = ⟨R^≻ D_λ v_a, v_b⟩ = Σ_l λ_l (v_a,2l v_b,2l+1 − v_a,2l+1 v_b,2l)
    P(a ≻ b | x) = σ(s / β)

s is skew-symmetric (s(a, b) = −s(b, a), s(a, a) = 0) but need not be transitive: with
k = 1 and v on the unit circle, s = λ sin(θ_b − θ_a), and three responses 120° apart
form a cycle A ≻ B ≻ C ≻ A, which no scalar reward can order. With k = 1 and the second
coordinate fixed at c, s = λ c (v_a,0 − v_b,0): Bradley–Terry with reward v_0.

The gate λ is non-negative and sums to k, λ = k · softmax(·) as in the reference code:
- `constant`: one learned vector;  `prompt`: λ(x) = k · softmax(W e_x + c);
- `user` (personalized GPM, registered as `gpm_personal`): K prototype prompt gates
  Λ_j(x) = k · softmax(W_j e_x + c_j) and user weights w_u = softmax(W_u) as in PAL;
  λ_u(x) = Σ_j w_uj Λ_j(x), so users differ in how much each preference dimension (each
  cyclic block) counts. The user state is W_u ∈ R^K, fitted for unseen users by the shared
  MAP few-shot inference.

Formulation, on purpose: the gate enters once, s = ⟨R^≻ D_λ v_a, v_b⟩, as in the reference
code and docs/design/equations.md. The paper writes R^≻(x) = D(x) R^≻ D(x); since the 2×2 blocks λ_l I_2
commute with [[0, −1], [1, 0]], that is R^≻ D_{λ²}: the same family of functions, the paper's
λ being the square root of ours (tested). L2 normalisation follows the paper and is on by
default (`normalize`); the reference code has it commented out, `normalize=false` gives that.
One pooled vector per text (frozen embeddings) instead of the last token's hidden state.

For exact skew-symmetry the score is computed as c(a, b) − c(b, a) with the bilinear
c(a, b) = Σ_l λ_l v_a,2l v_b,2l+1: swapping a and b negates it bit for bit, under any
floating-point contraction, and s(a, a) is exactly 0.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import MLP, Dims, NullPrompt, PairEmbeddings, PreferenceModel
from pluralign.models.pal import average_mixture_logits, centred_logits, mixture_logit_table

GATES = ("constant", "prompt", "user")


@dataclasses.dataclass
class GPMConfig:
    name: str = "gpm"  # gpm | gpm_personal (= gate "user")
    n_blocks: int = 2  # k: v ∈ R^{2k}
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])  # the embedding MLP's hidden layers
    normalize: bool = True  # L2-normalise v (paper); false = reference code
    beta: float = 0.1  # temperature: P = σ(s / β); with unit v, |s| ≤ max λ ≤ k
    gate: str = "constant"  # constant | prompt | user
    n_prototypes: int = 3  # K prototype gates (gate "user")
    user_init_scale: float = 0.1  # std of the initial W_u; breaks the symmetry between prototypes

    def __post_init__(self):
        if self.gate not in GATES:
            raise ValueError(f"model.gate must be one of {list(GATES)}, got {self.gate!r}")
        if self.name == "gpm_personal" and self.gate != "user":
            raise ValueError(f"model gpm_personal is GPM with gate 'user', got model.gate={self.gate!r}")
        if self.n_blocks < 1 or self.n_prototypes < 1:
            raise ValueError(f"model.n_blocks and model.n_prototypes must be >= 1, got {self.n_blocks}, {self.n_prototypes}")
        if self.beta <= 0:
            raise ValueError(f"model.beta must be > 0, got {self.beta}")


def cross(lam: jax.Array, v_a: jax.Array, v_b: jax.Array) -> jax.Array:
    """c(a, b) = Σ_l λ_l v_a,2l v_b,2l+1 over the last axis: [..., k], [..., 2k], [..., 2k] -> [...]."""
    return jnp.sum(lam * v_a[..., 0::2] * v_b[..., 1::2], axis=-1)


def skew_score(lam: jax.Array, v_a: jax.Array, v_b: jax.Array) -> jax.Array:
    """s = ⟨R^≻ D_λ v_a, v_b⟩ = c(a, b) − c(b, a): exactly antisymmetric in (a, b)."""
    return cross(lam, v_a, v_b) - cross(lam, v_b, v_a)


class GPM(PreferenceModel):
    """General preference model; `config.gate` picks a constant, prompt or user gate."""

    has_scalar_reward = False  # preferences may be cyclic

    @classmethod
    def state_dim(cls, config: GPMConfig, dims: Dims) -> int:
        return config.n_prototypes if config.gate == "user" else 0  # K user weights' logits, or none

    def __init__(self, config: GPMConfig, dims: Dims, *, rngs: nnx.Rngs):
        k, D = config.n_blocks, dims.dim
        self.n_blocks = k
        self.normalize = config.normalize
        self.beta = config.beta
        self.personal = config.gate == "user"
        self.null_prompt = NullPrompt(D, rngs=rngs)
        self.embed_net = MLP(2 * D, tuple(config.hidden), 2 * k, rngs=rngs)  # v(x, y)
        # Gate logits W_j e_x + c_j for J gates: J = K prototypes (user gate) or 1;
        # the `constant` gate has no W, so λ depends on c only.
        n_gates = config.n_prototypes if self.personal else 1
        self.prompt_gated = config.gate != "constant"
        if self.prompt_gated:
            self.gate_maps = nnx.Param(jax.random.normal(rngs.params(), (n_gates, D, k)) / math.sqrt(D))  # [J, D, k]
        self.gate_bias = nnx.Param(  # [J, k]; random for prototypes so they start apart
            jax.random.normal(rngs.params(), (n_gates, k)) if self.personal else jnp.zeros((1, k))
        )
        self.user_state_dim = self.state_dim(config, dims)
        if self.personal:
            self.user_mixture_logits = mixture_logit_table(dims.n_users, config.n_prototypes, config.user_init_scale, rngs)  # W

    # --- pieces -----------------------------------------------------------------------

    def embed(self, e_x: jax.Array, has_prompt: jax.Array, e_y: jax.Array) -> jax.Array:
        """[B, D], [B], [B, D] -> v(x, y) [B, 2k]."""
        v = self.embed_net(jnp.concatenate([self.null_prompt(e_x, has_prompt), e_y], axis=-1))
        if self.normalize:
            v = v / jnp.sqrt(jnp.sum(jnp.square(v), axis=-1, keepdims=True) + 1e-12)
        return v

    def prototype_gates(self, e_x: jax.Array, has_prompt: jax.Array) -> jax.Array:
        """[B, D], [B] -> Λ_j(x) = k · softmax(W_j e_x + c_j): [B, J, k], non-negative, rows sum to k."""
        z = jnp.broadcast_to(self.gate_bias[...][None], (e_x.shape[0], *self.gate_bias.shape))  # [B, J, k]
        if self.prompt_gated:
            z = z + jnp.einsum("bD,jDk->bjk", self.null_prompt(e_x, has_prompt), self.gate_maps[...])
        return self.n_blocks * jax.nn.softmax(z, axis=-1)

    def gate(self, user_state: jax.Array, gates: jax.Array) -> jax.Array:
        """λ = Σ_j w_j Λ_j: [B, S], [B, J, k] -> [B, k] (w = softmax(W_u) or the single gate)."""
        if not self.personal:
            return gates[:, 0]
        return jnp.einsum("bj,bjk->bk", jax.nn.softmax(user_state, axis=-1), gates)

    # --- the model surface -------------------------------------------------------------

    def pair_features(self, pair: PairEmbeddings):
        e_x2 = jnp.concatenate([pair.e_x, pair.e_x], axis=0)
        has_prompt2 = jnp.concatenate([pair.has_prompt, pair.has_prompt], axis=0)
        v_a, v_b = jnp.split(self.embed(e_x2, has_prompt2, jnp.concatenate([pair.e_a, pair.e_b], axis=0)), 2)
        return v_a, v_b, self.prototype_gates(pair.e_x, pair.has_prompt)  # [B, 2k], [B, 2k], [B, J, k]

    def pair_logits(self, user_state, features):
        v_a, v_b, gates = features
        return skew_score(self.gate(user_state, gates), v_a, v_b) / self.beta  # [B]

    def preference_logit_matrix(self, user_state, e_x, has_prompt, e_items):
        """[S], [D], [] bool, [n, D] -> [n, n] logits of P(i ≻ j | x, u) with one matrix product.

        Each response is embedded once (n forward passes, not n²): C = (V_even ⊙ λ) V_oddᵀ holds
        c(i, j), and L = (C − Cᵀ) / β is exactly skew-symmetric with a zero diagonal.
        """
        n = e_items.shape[0]
        e_x_n = jnp.broadcast_to(e_x, e_items.shape)
        v = self.embed(e_x_n, jnp.broadcast_to(has_prompt, (n,)), e_items)  # [n, 2k]
        gates = self.prototype_gates(e_x[None], jnp.reshape(has_prompt, (1,)))  # [1, J, k]
        lam = self.gate(user_state[None], gates)  # [1, k]
        c = (v[:, 0::2] * lam) @ v[:, 1::2].T  # [n, n]
        return (c - c.T) / self.beta

    def reward(self, user_state, e_x, has_prompt, e_y):
        raise NotImplementedError(
            "GPM has no scalar reward (preferences may be cyclic); use preference_logit_matrix or "
            "pluralign.models.ranking.rank_by_average_preference for a ranking"
        )

    def user_table_state(self, users):
        if not self.personal:
            return super().user_table_state(users)
        return self.user_mixture_logits[...][users]  # [B, K]

    def canonical_user_state(self, user_state):
        return centred_logits(user_state) if self.personal else user_state  # as PAL

    def population_user_state(self, users=None):
        if not self.personal:
            return super().population_user_state(users)
        return average_mixture_logits(self.user_mixture_logits[...], users)  # [K], as PAL

    def describe_user_states(self, states):
        if not self.personal:
            return super().describe_user_states(states)
        D = self.null_prompt.vector.shape[0]
        gates = self.prototype_gates(jnp.zeros((1, D)), jnp.zeros((1,), bool))  # [1, J, k] with the null prompt
        lam = self.gate(states, jnp.broadcast_to(gates, (states.shape[0], *gates.shape[1:])))  # [U, k]
        return {
            "gate_weights": (jax.nn.softmax(states, axis=-1), "w_u = softmax(W_u) ∈ Δ^{K−1}: user u's mixture over the "
                                                                "K prototype gates."),
            "gates": (lam, "λ_u = Σ_j w_uj Λ_j(null prompt) ∈ R^k_{≥0}: user u's weight on each of the k skew-symmetric "
                           "preference blocks, for a prompt-free comparison (prompts move Λ_j)."),
        }
