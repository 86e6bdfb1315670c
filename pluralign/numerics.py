"""Small numerical functions shared by models, evaluation and export (the lowest layer: it
imports nothing from pluralign, so any module can use it without an import cycle)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import entr


def unit(v: jax.Array, eps: float) -> jax.Array:
    """v / (‖v‖ + eps) over the last axis: a direction, finite at v = 0. Callers keep their own
    eps (PAL 1e-6, DPA 1e-9) so their numbers do not move."""
    return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps)


def optimizer_update(tx, grads, opt_state, params):
    """`tx.update(grads, opt_state, params)` (an optax transformation) under JAX's standard dtype
    promotion: Adam's bias correction raises a float to its int32 step count, which the strict
    promotion the tests run under refuses."""
    with jax.numpy_dtype_promotion("standard"):
        return tx.update(grads, opt_state, params)


def binary_entropy(p: jax.Array) -> jax.Array:
    """H(p) in nats, elementwise; 0 at p ∈ {0, 1}."""
    return entr(p) + entr(1.0 - p)
