"""A full-rank per-user linear residual on a shared reward, through a fixed projection (issue 22).

    r_u(x, y) = r_θ(x, y) + v_uᵀ P e_y / √d,    v_u ∈ R^d,  d = min(D, residual_dim)
    P(a ≻ b | x, u) = σ(r_θ(x, a) − r_θ(x, b) + v_uᵀ P (e_a − e_b) / √d)

`bt_residual` (`BTResidual`) is BT's reward plus this term; `lore` adds it beside its learned
low-rank basis when `residual_dim > 0` (`pluralign.models.lore`). v_u = 0 is the population BT
model, by the same code path, so a new user starts at BT.

P ∈ R^{d×D} is fixed, never trained: it is fitted once, before comparison training
(`prepare_params`), from the embeddings of the items in seen users' training pairs:

- D > d: the top d principal directions, *whitened* (row i = u_iᵀ / s_i, s_i the std of the
  items along u_i), so every coordinate of P e has unit variance over the training items and no
  direction of the state is cheap or expensive under an isotropic prior.
- D ≤ d: the identity divided by one scalar, the items' RMS per-coordinate std (an identity up
  to scale; the function class is that of the raw embeddings). The scalar makes the state's
  units independent of the embeddings' overall scale.

With unit-variance coordinates and the 1/√d, a state of norm √d (entries O(1)) moves a logit by
O(1) whatever D and the encoder's scale: a unit of state is worth O(1) logit, as in
linear_personal. P is an `nnx.Variable`, not an `nnx.Param`; the trainer differentiates the whole
state, so it is read under `stop_gradient`: its gradient is exactly 0 and Adam / SGD leave it
unchanged (adamw's decoupled weight decay would not: it shrinks every leaf). It is a leaf of the
model state, so the artifact saves and restores it with the parameters.

Seen users' v_u are a learned table, trained jointly under a Gaussian prior
½λ‖v_u‖² per comparison (λ = `residual_prior_strength`); unseen users get the shared few-shot
protocol (empirical-Bayes prior fitted to the seen users' v_u, Laplace posterior; the head is
linear in v_u, so the MAP problem is convex). λ is small by default (0.001): a per-comparison
prior of 0.1 shrinks each seen user's v_u several-fold below the evidence (a user's Fisher
information per comparison along one whitened direction is ~0.4/d), so the seen states, which
*are* the empirical-Bayes prior's samples, describe the prior's scale and shape badly
(see `pluralign.models.linear`, where this was measured).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.models.base import Dims, PairEmbeddings, gather, weighted_metrics
from pluralign.models.bt import BT, BTConfig, PopulationStage


def projected_dim(dim: int, residual_dim: int) -> int:
    """d = min(D, residual_dim): the size of the residual state."""
    return min(dim, residual_dim)


def fit_projection(items: np.ndarray, residual_dim: int, eigenvalue_floor: float = 1e-6) -> tuple[np.ndarray, dict]:
    """[N, D] training items' embeddings -> (Pᵀ [D, d] float32, summary): whitened PCA when
    D > d, else the identity over the RMS std. Directions whose variance is below
    `eigenvalue_floor` times the largest are not amplified beyond that floor."""
    x = np.asarray(items, np.float64)
    dim = x.shape[1]
    d = projected_dim(dim, residual_dim)
    centred = x - x.mean(axis=0, keepdims=True)
    if dim <= residual_dim:
        rms = math.sqrt(max(float(np.mean(np.square(centred))), 1e-12))
        return (np.eye(dim) / rms).astype(np.float32), {"projection": "identity", "n_items": int(len(x)), "rms_std": rms}
    covariance = centred.T @ centred / max(len(x) - 1, 1)  # [D, D]
    evals, evecs = np.linalg.eigh(covariance)  # ascending
    evals, evecs = evals[::-1], evecs[:, ::-1]
    top = np.maximum(evals[:d], eigenvalue_floor * max(evals[0], 1e-12))
    projection_t = evecs[:, :d] / np.sqrt(top)[None, :]  # Pᵀ [D, d]: whitened principal directions
    explained = float(evals[:d].sum() / max(evals.sum(), 1e-12))
    return projection_t.astype(np.float32), {"projection": "pca_whitened", "n_items": int(len(x)),
                                             "explained_variance": explained}


class FixedProjection(nnx.Module):
    """e ↦ P e / √d with P fixed (set by `fit_projection` before training, never trained)."""

    def __init__(self, dim: int, residual_dim: int):
        self.out_dim = projected_dim(dim, residual_dim)
        # Pᵀ [D, d]; the truncated identity until `prepare_projection` sets it.
        self.matrix = nnx.Variable(jnp.eye(dim, self.out_dim, dtype=jnp.float32))

    def __call__(self, e: jax.Array) -> jax.Array:
        """[..., D] -> [..., d]."""
        # Not a Param: the trainer differentiates every leaf, so the gradient is stopped here.
        return e @ jax.lax.stop_gradient(self.matrix[...]) / math.sqrt(self.out_dim)


def prepare_projection(projection_state, dataset, train_items: np.ndarray, residual_dim: int):
    """Fits P on `train_items` and writes it into every seed's copy of a `FixedProjection`'s
    (seed-stacked) state: (state, summary)."""
    matrix, summary = fit_projection(np.asarray(dataset.items)[np.asarray(train_items)], residual_dim)
    fill = lambda old: jnp.broadcast_to(jnp.asarray(matrix, old.dtype), old.shape)  # noqa: E731
    return jax.tree.map(fill, projection_state), summary


@dataclasses.dataclass
class BTResidualConfig(BTConfig):
    name: str = "bt_residual"
    residual_dim: int = 64  # d: the projected embedding size (PCA above it, the identity at or below it)
    residual_prior_strength: float = 0.001  # λ: Gaussian prior ½λ‖v_u‖² per comparison
    user_init_scale: float = 0.01  # std of the initial v_u
    population_stage: bool = True  # train r_θ first as BT (own early stopping), then freeze it (models.bt.PopulationStage)

    def __post_init__(self):
        if self.residual_dim < 1 or self.residual_prior_strength < 0:
            raise ValueError(f"model.residual_dim must be >= 1 and model.residual_prior_strength >= 0, "
                             f"got {self.residual_dim}, {self.residual_prior_strength}")


class BTResidual(BT):
    """BT's shared reward (inherited: null prompt, reward MLP, its pair features) + v_uᵀ P e_y / √d."""

    logit_is_reward_difference = True

    @classmethod
    def population_stage(cls, config: BTResidualConfig) -> PopulationStage | None:
        return PopulationStage(BTConfig(hidden=list(config.hidden))) if config.population_stage else None

    @classmethod
    def state_dim(cls, config: BTResidualConfig, dims: Dims) -> int:
        return projected_dim(dims.dim, config.residual_dim)

    def __init__(self, config: BTResidualConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, rngs=rngs)
        self.user_state_dim = self.state_dim(config, dims)
        self.residual_prior_strength = config.residual_prior_strength
        # r_θ trained first as BT, alone: its prediction is the population's marginal (base.PreferenceModel.population_is_marginal)
        self.population_is_marginal = config.population_stage
        self.residual_projection = FixedProjection(dims.dim, config.residual_dim)
        self.residual_weights = nnx.Param(  # v [n_users, d]
            config.user_init_scale * jax.random.normal(rngs.params(), (dims.n_users, self.user_state_dim)))

    def pair_features(self, pair: PairEmbeddings):
        shared = super().pair_features(pair)  # [B] r_θ(x, a) − r_θ(x, b), BT's own computation
        return shared, self.residual_projection(pair.e_a - pair.e_b)  # [B], [B, d]

    def pair_logits(self, user_state, features):
        shared, projected = features
        return shared + jnp.sum(user_state * projected, axis=-1)  # [B]

    def reward(self, user_state, e_x, has_prompt, e_y):
        return super().reward(user_state, e_x, has_prompt, e_y) + jnp.sum(user_state * self.residual_projection(e_y), axis=-1)

    def rewards(self, user_state, e_x, has_prompt, e_y):
        personal = jnp.einsum("bs,bns->bn", user_state, self.residual_projection(e_y))  # [B, N]
        return super().rewards(user_state, e_x, has_prompt, e_y) + personal

    def user_table_state(self, users):
        return self.residual_weights[...][users]  # [B, d]

    def population_user_state(self, users=None):
        return jnp.zeros((self.user_state_dim,), jnp.float32)  # v = 0 is the population (BT) model

    def loss(self, tables, batch, rng):
        del rng
        v = self.user_table_state(batch.user)  # [B, d]
        metrics = weighted_metrics(self.pair_logits(v, self.pair_features(gather(tables, batch))), batch.label, batch.weight)
        total_weight = jnp.maximum(batch.weight.sum(), 1e-9)
        metrics["residual_penalty"] = jnp.sum(batch.weight * 0.5 * jnp.sum(jnp.square(v), axis=-1)) / total_weight
        return metrics["loss"] + self.residual_prior_strength * metrics["residual_penalty"], metrics

    @classmethod
    def prepare_params(cls, config: BTResidualConfig, dataset, train_items, params):
        params["residual_projection"], summary = prepare_projection(
            params["residual_projection"], dataset, train_items, config.residual_dim)
        return params, summary
