"""Preference matrices and rankings with linear query complexity (GPM paper, §"Efficiency").

Embedding n responses once and taking one matrix product gives all n² pairwise
preferences: `preference_matrix(model, ...)[i, j] = P(i ≻ j | x, u)`, from the model's
`preference_logit_matrix` hook: GPM's own one-matrix-product form; by default r_i − r_j from
one `rewards` call for a model whose logit is a reward difference (`logit_is_reward_difference`:
BT, PAL, VPL, DPA, DPRM), else (DPL, whose P(a ≻ b) compares two reward distributions) exactly,
by its own pair logits on all n² ordered pairs.

A ranking of responses that may prefer each other cyclically is by average preference,
the GPM paper's score of a response against a reference set:
    score_i = mean_{j ∈ ref, j ≠ i} P(i ≻ j).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pluralign.models.base import PreferenceModel


def preference_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[n, n] logits of P(i ≻ j | x, u); user_state [S], e_x [D] (zeros if none), has_prompt [] bool
    (`PreferenceModel.preference_logit_matrix`)."""
    return model.preference_logit_matrix(user_state, e_x, has_prompt, e_items)


def preference_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[n, n] probabilities P(i ≻ j | x, u); the diagonal is exactly 1/2."""
    return jax.nn.sigmoid(preference_logit_matrix(model, user_state, e_x, has_prompt, e_items))


def average_preference(probs: jax.Array, reference: jax.Array | None = None) -> jax.Array:
    """score_i = mean_{j ∈ reference, j ≠ i} P(i ≻ j): [n, n] probabilities, reference [m] indices
    (default: every response) -> [n]."""
    n = probs.shape[0]
    reference = jnp.arange(n) if reference is None else jnp.asarray(reference)
    against = probs[:, reference]  # [n, m]
    not_self = (jnp.arange(n)[:, None] != reference[None, :]).astype(probs.dtype)  # [n, m]
    return jnp.sum(against * not_self, axis=1) / jnp.maximum(jnp.sum(not_self, axis=1), 1.0)


def rank_by_average_preference(probs: jax.Array, reference: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(order, scores): response indices best first, and their average-preference scores [n]."""
    scores = average_preference(probs, reference)
    return jnp.argsort(-scores), scores
