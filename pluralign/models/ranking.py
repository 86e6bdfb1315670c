"""Preference matrices and rankings with linear query complexity (GPM paper, §"Efficiency").

Embedding n responses once and taking one matrix product gives all n² pairwise
preferences: `preference_matrix(model, ...)[i, j] = P(i ≻ j | x, u)`. A model with a
`preference_logit_matrix(user_state, e_x, has_prompt, e_items)` method (GPM) uses its own; a
model whose logit is a reward difference (`logit_is_reward_difference`: BT, PAL, VPL, DPA, DPRM)
gets r_i − r_j from one `rewards` call; any other (DPL, whose P(a ≻ b) compares two reward
distributions) is scored exactly, by its own pair logits on all n² ordered pairs.

A ranking of responses that may prefer each other cyclically is by average preference,
the GPM paper's score of a response against a reference set:
    score_i = mean_{j ∈ ref, j ≠ i} P(i ≻ j).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pluralign.models.base import PairEmbeddings, PreferenceModel


def reward_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[S], [D], [] bool, [n, D] -> [n, n] logits r_i − r_j from one `rewards` call: the n responses
    form one (user, prompt) row, so models that can compute the prompt part once per row do."""
    r = model.rewards(user_state[None], e_x[None], jnp.asarray(has_prompt)[None], e_items[None])[0]  # [n]
    return r[:, None] - r[None, :]


def pair_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[n, n] the model's own pair logits on all n² ordered pairs (exact for every model)."""
    n, dim = e_items.shape
    i, j = jnp.divmod(jnp.arange(n * n), n)
    pair = PairEmbeddings(
        e_x=jnp.broadcast_to(e_x, (n * n, dim)), has_prompt=jnp.broadcast_to(has_prompt, (n * n,)), e_a=e_items[i], e_b=e_items[j]
    )
    logits = model.pair_logits(jnp.broadcast_to(user_state, (n * n, user_state.shape[-1])), model.pair_features(pair))
    return logits.reshape(n, n)


def preference_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[n, n] logits of P(i ≻ j | x, u); user_state [S], e_x [D] (zeros if none), has_prompt [] bool."""
    own = getattr(model, "preference_logit_matrix", None)
    if own is not None:
        return own(user_state, e_x, has_prompt, e_items)
    if model.logit_is_reward_difference:
        return reward_logit_matrix(model, user_state, e_x, has_prompt, e_items)
    return pair_logit_matrix(model, user_state, e_x, has_prompt, e_items)


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
