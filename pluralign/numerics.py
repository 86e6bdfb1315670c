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


def binary_entropy(p: jax.Array) -> jax.Array:
    """H(p) in nats, elementwise; 0 at p ∈ {0, 1}."""
    return entr(p) + entr(1.0 - p)
