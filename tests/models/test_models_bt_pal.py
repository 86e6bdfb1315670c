"""Behaviour of BT, PAL-A and PAL-B: shapes, the equations of docs/design/equations.md, losses, null prompts.

Every expected value is recomputed here in numpy from the module's parameters, not
read back from the module's own forward pass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from pluralign.models import (
    BTConfig,
    Dims,
    PairBatch,
    PairEmbeddings,
    PALConfig,
    Tables,
    gather,
    logits,
    loss,
    model_class,
    preference_loss,
    reward,
    seen_logits,
)

from tests.models.helpers import D, make_pair, np_bce, np_mlp, np_softmax, random_states, swap, tiny_tables_and_batch

N_USERS, K, LATENT = 7, 3, 4
MODELS = ["bt", "pal_a", "pal_b"]


def make_model(name: str, seed: int = 0, **overrides):
    if name == "bt":
        config = BTConfig(**overrides)
    else:
        config = PALConfig(name=name, n_prototypes=K, latent_dim=LATENT, **overrides)
    return model_class(name)(config, Dims(dim=D, n_users=N_USERS), rngs=nnx.Rngs(seed))


def np_pal_a_logits(model, user_state, pair):
    f_a = np_mlp(model.item_map, np.asarray(pair.e_a, np.float64))
    f_b = np_mlp(model.item_map, np.asarray(pair.e_b, np.float64))
    ideal = np_softmax(np.asarray(user_state, np.float64)) @ np.asarray(model.prototypes[...], np.float64)  # a_u
    tau = np.exp(float(model.log_temperature[...]))
    return tau * (np.sum((f_b - ideal) ** 2, -1) - np.sum((f_a - ideal) ** 2, -1))


def np_pal_b_logits(model, user_state, pair, cap):
    has_prompt = np.asarray(pair.has_prompt)
    e_x = np.where(has_prompt[:, None], np.asarray(pair.e_x), np.asarray(model.null_prompt.vector[...]))
    G, c = np.asarray(model.prompt_maps[...], np.float64), np.asarray(model.prompt_bias[...], np.float64)
    directions = np.stack([e_x @ G[k] + c[k] for k in range(G.shape[0])], axis=1)  # g_k(e_x): [B, K, d]
    u = np.einsum("bk,bkd->bd", np_softmax(np.asarray(user_state, np.float64)), directions)

    def cos(f, v):
        return np.sum(f * v, -1) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(v, axis=-1))

    f_a = np_mlp(model.item_map, np.asarray(pair.e_a, np.float64))
    f_b = np_mlp(model.item_map, np.asarray(pair.e_b, np.float64))
    scale = min(math.exp(float(model.logit_scale[...])), cap)
    return scale * (cos(f_a, u) - cos(f_b, u))


def np_bt_reward(model, e_x, has_prompt, e_y):
    e_x = np.where(np.asarray(has_prompt)[:, None], np.asarray(e_x), np.asarray(model.null_prompt.vector[...]))
    return np_mlp(model.reward_net, np.concatenate([e_x, np.asarray(e_y)], axis=-1).astype(np.float64))[:, 0]


# --- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_shapes(name):
    model = make_model(name)
    expected_S = 0 if name == "bt" else K
    assert model.user_state_dim == expected_S
    B = 5
    pair = make_pair(0, n=B)
    users = jnp.array([0, 3, 6, 1, 1])
    states = model.user_table_state(users)
    assert states.shape == (B, expected_S) and states.dtype == jnp.float32
    features = model.pair_features(pair)
    for leaf in jax.tree.leaves(features):
        assert leaf.shape[0] == B
    z = model.pair_logits(states, features)
    assert z.shape == (B,) and z.dtype == jnp.float32
    r = reward(model, states, pair.e_x, pair.has_prompt, pair.e_a)
    assert r.shape == (B,)
    assert model.population_user_state().shape == (expected_S,)
    assert np.all(np.isfinite(np.asarray(z))) and np.all(np.isfinite(np.asarray(r)))


@pytest.mark.parametrize("name", ["pal_a", "pal_b"])
def test_seen_user_state_is_that_users_row(name):
    model = make_model(name)
    users = jnp.array([4, 0, 4])
    states = np.asarray(model.user_table_state(users))
    table = np.asarray(model.user_mixture_logits[...])
    np.testing.assert_array_equal(states, table[[4, 0, 4]])


@pytest.mark.parametrize("name", ["pal_a", "pal_b"])
def test_population_user_state_is_the_average_users_weights(name):
    model = make_model(name)
    model.user_mixture_logits[...] = jnp.asarray(np.random.default_rng(0).standard_normal((N_USERS, K)), jnp.float32)
    weights = np_softmax(np.asarray(model.user_mixture_logits[...], np.float64))
    average = np_softmax(np.asarray(model.population_user_state(), np.float64))
    np.testing.assert_allclose(average, weights.mean(axis=0), rtol=1e-5)
    # Restricted to some users (the seen ones), only their rows count.
    users = jnp.array([1, 4, 5])
    average_of_some = np_softmax(np.asarray(model.population_user_state(users), np.float64))
    np.testing.assert_allclose(average_of_some, weights[[1, 4, 5]].mean(axis=0), rtol=1e-5)


# --- equations -------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_swapping_a_and_b_negates_the_logit(name):
    model = make_model(name)
    pair = make_pair(1, n=8)
    states = random_states(model, 8)
    z = np.asarray(logits(model, states, pair))
    z_swapped = np.asarray(logits(model, states, swap(pair)))
    assert np.max(np.abs(z)) > 1e-3  # not trivially zero
    np.testing.assert_allclose(z_swapped, -z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_logit_is_reward_difference(name):
    model = make_model(name)
    pair = make_pair(2, n=8)
    states = random_states(model, 8)
    z = logits(model, states, pair)
    r_a = reward(model, states, pair.e_x, pair.has_prompt, pair.e_a)
    r_b = reward(model, states, pair.e_x, pair.has_prompt, pair.e_b)
    np.testing.assert_allclose(np.asarray(z), np.asarray(r_a - r_b), rtol=1e-4, atol=1e-5)


def test_bt_equation():
    """r(x, y) = MLP([e_x; e_y]) with the null vector for missing prompts, P = σ(r(a) − r(b))."""
    model = make_model("bt", hidden=[8])
    pair = make_pair(3, n=8)
    expected = np_bt_reward(model, pair.e_x, pair.has_prompt, pair.e_a) - np_bt_reward(
        model, pair.e_x, pair.has_prompt, pair.e_b
    )
    np.testing.assert_allclose(np.asarray(logits(model, jnp.zeros((8, 0)), pair)), expected, rtol=1e-4, atol=1e-5)


def test_pal_a_equation():
    """logit = τ(‖f(b) − a_u‖² − ‖f(a) − a_u‖²), a_u = softmax(W_u) P."""
    model = make_model("pal_a", hidden=[8])
    model.log_temperature[...] = jnp.asarray(0.4)
    model.prototypes[...] = jnp.asarray(np.random.default_rng(5).standard_normal((K, LATENT)), jnp.float32)
    pair = make_pair(4, n=10)
    states = random_states(model, 10, seed=7)
    expected = np_pal_a_logits(model, states, pair)
    np.testing.assert_allclose(np.asarray(logits(model, states, pair)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "log_scale,cap",
    [(math.log(5.0), 100.0), (math.log(1000.0), 100.0), (math.log(50.0), 20.0)],
    ids=["below_cap", "capped", "capped_at_20"],
)
def test_pal_b_equation_and_logit_scale_cap(log_scale, cap):
    """logit = min(exp(t), cap)·(cos(f(a), u_u(x)) − cos(f(b), u_u(x))), u_u(x) = Σ_k w_uk g_k(x)."""
    model = make_model("pal_b", max_logit_scale=cap)
    model.logit_scale[...] = jnp.asarray(log_scale, jnp.float32)
    pair = make_pair(5, n=10)
    states = random_states(model, 10, seed=8)
    z = np.asarray(logits(model, states, pair))
    np.testing.assert_allclose(z, np_pal_b_logits(model, states, pair, cap), rtol=1e-4, atol=1e-4)
    # cos differences lie in [−2, 2], so the cap bounds every logit.
    assert np.max(np.abs(z)) <= 2 * min(math.exp(log_scale), cap) + 1e-4


def test_pal_a_ignores_the_prompt():
    model = make_model("pal_a")
    pair = make_pair(6, n=6, has_prompt=[True] * 6)
    states = random_states(model, 6)
    other = pair.replace(e_x=pair.e_x + 3.0)
    no_prompt = pair.replace(e_x=jnp.zeros_like(pair.e_x), has_prompt=jnp.zeros(6, bool))
    z = np.asarray(logits(model, states, pair))
    np.testing.assert_array_equal(z, np.asarray(logits(model, states, other)))
    np.testing.assert_array_equal(z, np.asarray(logits(model, states, no_prompt)))


@pytest.mark.parametrize("name", ["bt", "pal_b"])
def test_null_prompt_vector_stands_in_for_missing_prompts(name):
    model = make_model(name)
    has_prompt = np.array([True, False, True, False, False, True])
    pair = make_pair(7, n=6, has_prompt=has_prompt)
    states = random_states(model, 6)
    before = np.asarray(logits(model, states, pair))
    model.null_prompt.vector[...] = model.null_prompt.vector[...] + 1.0
    after = np.asarray(logits(model, states, pair))
    np.testing.assert_array_equal(after[has_prompt], before[has_prompt])
    assert np.all(np.abs(after[~has_prompt] - before[~has_prompt]) > 1e-6)


def test_gather_marks_missing_prompts():
    rng = np.random.default_rng(0)
    tables = Tables(
        items=jnp.asarray(rng.standard_normal((5, D)), jnp.float16),
        prompts=jnp.asarray(rng.standard_normal((3, D)), jnp.float32),
    )
    batch = PairBatch(
        user=jnp.array([0, 1, 2]), prompt=jnp.array([2, -1, 0]), a=jnp.array([0, 1, 4]), b=jnp.array([3, 2, 1]),
        label=jnp.ones(3), weight=jnp.ones(3),
    )
    pair = gather(tables, batch)
    np.testing.assert_array_equal(np.asarray(pair.has_prompt), [True, False, True])
    np.testing.assert_array_equal(np.asarray(pair.e_x[1]), np.zeros(D))
    np.testing.assert_array_equal(np.asarray(pair.e_x[0]), np.asarray(tables.prompts[2]))
    assert pair.e_a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(pair.e_b), np.asarray(tables.items, np.float32)[[3, 2, 1]])


# --- losses ----------------------------------------------------------------------------


def test_preference_loss_known_values():
    z = np.array([2.0, -1.0, 0.5, 0.0, -3.0], np.float32)
    y = np.array([1.0, 0.3, 0.5, 0.0, 0.9], np.float32)
    w = np.array([1.0, 2.0, 0.5, 1.0, 0.0], np.float32)
    sig = [1.0 / (1.0 + math.exp(-float(zi))) for zi in z]
    expected = [-wi * (yi * math.log(si) + (1 - yi) * math.log(1 - si)) for wi, yi, si in zip(w, y, sig)]
    got = jax.jit(preference_loss)(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-7)
    assert float(got[4]) == 0.0  # weight 0 contributes nothing


def test_preference_loss_is_stable_for_large_logits():
    z = jnp.array([200.0, -200.0, 200.0])
    y = jnp.array([1.0, 0.0, 0.0])
    got = np.asarray(preference_loss(z, y, jnp.ones(3)))
    np.testing.assert_allclose(got, [0.0, 0.0, 200.0], atol=1e-4)
    grads = np.asarray(jax.grad(lambda z: preference_loss(z, y, jnp.ones(3)).sum())(z))
    assert np.all(np.isfinite(grads))


def test_preference_loss_gradients():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.standard_normal(6), jnp.float32)
    y = jnp.asarray(rng.random(6), jnp.float32)
    w = jnp.asarray(rng.random(6) + 0.5, jnp.float32)
    # float32: a coarse finite-difference step and tolerances.
    check_grads(
        lambda z, y: preference_loss(z, y, w).sum(), (z, y), order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2
    )
    # ∂ℓ/∂z = w(σ(z) − y): a closed form the check above cannot tell apart from a sign error in both.
    dz = jax.grad(lambda z: preference_loss(z, y, w).sum())(z)
    np.testing.assert_allclose(np.asarray(dz), np.asarray(w * (jax.nn.sigmoid(z) - y)), rtol=1e-5, atol=1e-6)


def test_pal_a_loss_known_value():
    """base.loss on hand-set prototypes, user weights and τ, against numpy."""
    model = make_model("pal_a")
    model.prototypes[...] = jnp.array([[2.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 1.0, 1.0]])
    model.user_mixture_logits[...] = jnp.asarray(np.random.default_rng(4).standard_normal((N_USERS, K)) * 2, jnp.float32)
    model.log_temperature[...] = jnp.asarray(-0.3)
    tables, batch = tiny_tables_and_batch()
    items = np.asarray(tables.items, np.float64)
    pair = PairEmbeddings(e_x=None, has_prompt=None, e_a=items[np.asarray(batch.a)], e_b=items[np.asarray(batch.b)])
    W_u = np.asarray(model.user_mixture_logits[...])[np.asarray(batch.user)]
    z = np_pal_a_logits(model, W_u, pair)
    y, w = np.asarray(batch.label, np.float64), np.asarray(batch.weight, np.float64)
    expected_loss = np.sum(w * np_bce(z, y)) / w.sum()
    expected_accuracy = np.sum(w * ((z > 0) == (y > 0.5))) / w.sum()

    value, metrics = jax.jit(loss)(model, tables, batch)
    np.testing.assert_allclose(float(value), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), expected_accuracy, rtol=1e-6)


def test_bt_loss_known_value():
    model = make_model("bt", hidden=[])
    tables, batch = tiny_tables_and_batch()
    items = np.asarray(tables.items)
    no_prompt = np.zeros(5, bool)
    z = np_bt_reward(model, np.zeros((5, D)), no_prompt, items[np.asarray(batch.a)]) - np_bt_reward(
        model, np.zeros((5, D)), no_prompt, items[np.asarray(batch.b)]
    )
    y, w = np.asarray(batch.label, np.float64), np.asarray(batch.weight, np.float64)
    value, _ = loss(model, tables, batch)
    np.testing.assert_allclose(float(value), np.sum(w * np_bce(z, y)) / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(seen_logits(model, tables, batch)), z, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_loss_ignores_padding_rows(name):
    model = make_model(name)
    tables, batch = tiny_tables_and_batch()
    value, _ = loss(model, tables, batch)
    # Changing what the weight-0 row points at must not change the loss.
    moved = batch.replace(a=batch.a.at[4].set(8), label=batch.label.at[4].set(0.0), user=batch.user.at[4].set(1))
    value_moved, _ = loss(model, tables, moved)
    np.testing.assert_allclose(float(value_moved), float(value), rtol=1e-6)
