"""`rewards` (N responses per (user, prompt) row) equals `reward` on every response, for every
registered model with a scalar reward: the overrides that compute the prompt part once per row
(BT, VPL) are the same function as the per-response path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.config import model_config
from pluralign.models import REGISTRY, base, ranking


def _built(name: str):
    """The registered model `name` at its default config, D = 8, 5 users, seed 0."""
    cls, _ = REGISTRY[name]
    return nnx.merge(*base.init(cls, model_config(name), base.Dims(dim=8, n_users=5), jax.random.PRNGKey(0)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rewards_of_n_responses_equal_reward_of_each(name):
    model = _built(name)
    B, N, D = 3, 4, 8
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    state = jax.random.normal(k[0], (B, model.user_state_dim))
    e_x = jax.random.normal(k[1], (B, D))
    has_prompt = jnp.array([True, False, True])  # the null prompt stands in for row 1's
    e_y = jax.random.normal(k[2], (B, N, D))
    rep = lambda x: jnp.repeat(x, N, axis=0)  # noqa: E731
    if not model.has_scalar_reward:  # GPM: cyclic preferences
        with pytest.raises(NotImplementedError):
            model.rewards(state, e_x, has_prompt, e_y)
        return
    expected = model.reward(rep(state), rep(e_x), rep(has_prompt), e_y.reshape(B * N, D)).reshape(B, N)
    np.testing.assert_allclose(model.rewards(state, e_x, has_prompt, e_y), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_preference_matrix_is_the_models_own_pair_logits(name):
    """`ranking.preference_logit_matrix` takes a shortcut (one embedding per response: GPM's
    matrix product, or reward differences) only where it equals the model's pair logits; DPL's
    P(a ≻ b) compares two reward distributions, so its matrix is not r_i − r_j."""
    model = _built(name)
    n, D = 5, 8
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    state = jax.random.normal(k[0], (model.user_state_dim,))
    e_x, e_items = jax.random.normal(k[1], (D,)), jax.random.normal(k[2], (n, D))
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pair = base.PairEmbeddings(
        e_x=jnp.broadcast_to(e_x, (n * n, D)), has_prompt=jnp.ones((n * n,), bool),
        e_a=e_items[i.reshape(-1)], e_b=e_items[j.reshape(-1)],
    )
    pairwise = base.logits(model, jnp.broadcast_to(state, (n * n, model.user_state_dim)), pair).reshape(n, n)
    matrix = ranking.preference_logit_matrix(model, state, e_x, jnp.asarray(True), e_items)
    np.testing.assert_allclose(matrix, pairwise, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_one_users_logits_are_the_pair_logits_with_the_state_on_every_pair(name):
    """`user_logits` (what a few-shot fit evaluates at every step) is `pair_logits` with one state
    repeated on every pair, for every model, PAL's rewritten forms (the ideal point or direction
    computed once) included; with prompts and without."""
    model = _built(name)
    n, D = 6, 8
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    state = jax.random.normal(k[0], (model.user_state_dim,))
    pair = base.PairEmbeddings(e_x=jax.random.normal(k[1], (n, D)), has_prompt=jnp.arange(n) % 2 == 0,
                               e_a=jax.random.normal(k[2], (n, D)), e_b=jax.random.normal(k[3], (n, D)))
    feats = model.pair_features(pair)
    expected = model.pair_logits(jnp.broadcast_to(state, (n, model.user_state_dim)), feats)
    np.testing.assert_allclose(model.user_logits(state, feats), expected, rtol=1e-4, atol=1e-4)
