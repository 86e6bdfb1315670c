"""Active preference elicitation: which comparison to ask a user about next.

A question (a candidate pair) is worth asking when its answer is informative about
the user's state φ (VPL's latent z, PAL's mixture weights, ...). With S samples
φ_s from the current posterior and the model's logits l_sp of P(a ≻ b | φ_s), the
expected information gain of asking pair p is the mutual information between the
label and φ (BALD; Houlsby et al., 2011):

    I(y; φ) = H( mean_s σ(l_sp) ) − mean_s H( σ(l_sp) ),   H(p) = −p log p − (1−p) log(1−p)

It is model-agnostic: any model whose posterior can be sampled provides the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import entr


def binary_entropy(p: jax.Array) -> jax.Array:
    """H(p) in nats, elementwise; 0 at p ∈ {0, 1}."""
    return entr(p) + entr(1.0 - p)


def label_information_gain(logits: jax.Array) -> jax.Array:
    """Mutual information I(y; φ) in nats per candidate pair (BALD).

    logits: [S, P] logits of P(a ≻ b) under S posterior samples of the user state for P
    candidate pairs. Returns [P], in [0, log 2]: 0 where every sample agrees (or all are
    equally unsure), large where the samples confidently disagree. Jit- and vmap-friendly.
    """
    p = jax.nn.sigmoid(logits.astype(jnp.float32))  # [S, P]
    expected_entropy = jnp.mean(-(p * jax.nn.log_sigmoid(logits) + (1.0 - p) * jax.nn.log_sigmoid(-logits)), axis=0)
    # Clip: rounding can make the difference of two nearly equal entropies slightly negative.
    return jnp.maximum(binary_entropy(jnp.mean(p, axis=0)) - expected_entropy, 0.0)  # [P]
