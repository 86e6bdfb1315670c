"""Preference matrices and rankings with linear query complexity (GPM paper, §"Efficiency").

Embedding n responses once and taking one matrix product gives all n² pairwise
preferences: `preference_matrix(model, ...)[i, j] = P(i ≻ j | x, u)`. Any model with a
`preference_logit_matrix(user_state, e_x, has_prompt, e_items)` method (GPM, BT) uses its
own; any other model with a scalar reward (PAL) gets r_i − r_j from n reward calls.

A ranking of responses that may prefer each other cyclically is by average preference,
the GPM paper's score of a response against a reference set:
    score_i = mean_{j ∈ ref, j ≠ i} P(i ≻ j).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pluralign.models.base import PreferenceModel


def reward_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[S], [D], [] bool, [n, D] -> [n, n] logits r_i − r_j from one `rewards` call: the n responses
    form one (user, prompt) row, so models that can compute the prompt part once per row do."""
    r = model.rewards(user_state[None], e_x[None], jnp.asarray(has_prompt)[None], e_items[None])[0]  # [n]
    return r[:, None] - r[None, :]


def preference_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[n, n] logits of P(i ≻ j | x, u); user_state [S], e_x [D] (zeros if none), has_prompt [] bool."""
    own = getattr(model, "preference_logit_matrix", None)
    if own is not None:
        return own(user_state, e_x, has_prompt, e_items)
    return reward_logit_matrix(model, user_state, e_x, has_prompt, e_items)


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
