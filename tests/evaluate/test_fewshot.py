"""The few-shot protocol: episodes, MAP user inference, and model selection off the test users."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.data import Comparisons
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate import fewshot
from pluralign.evaluate.fewshot import EvalConfig, make_episodes
from pluralign.models import BT, PALA, BTConfig, Dims, PairEmbeddings, PALConfig
from pluralign.models.base import fit_user_states
from pluralign.run import RunConfig, run
from pluralign.train.batches import make_tables, padded_batch
from pluralign.train.trainer import TrainConfig

D = 16


def rows_of(episodes_rows):
    return [r[r >= 0] for r in episodes_rows]


@pytest.fixture(scope="module")
def users():
    return np.arange(0, 60, 3)


@pytest.mark.parametrize("mode", ["random", "item_disjoint"])
def test_support_and_query_are_disjoint_rows_of_that_user(tiny_dataset, users, mode):
    c = tiny_dataset.comparisons
    ep = make_episodes(c, users, max_shots=50, mode=mode, seed=0)
    np.testing.assert_array_equal(ep.users, users)
    for u, support, query in zip(users, rows_of(ep.pool), rows_of(ep.query)):
        assert len(query) > 0
        assert np.intersect1d(support, query).size == 0
        assert len(np.unique(support)) == len(support) and len(np.unique(query)) == len(query)
        assert np.all(c.user[support] == u) and np.all(c.user[query] == u)


@pytest.mark.parametrize("mode", ["random", "item_disjoint"])
def test_query_is_the_same_for_every_k_and_supports_are_nested(tiny_dataset, users, mode):
    c = tiny_dataset.comparisons
    small = make_episodes(c, users, max_shots=5, mode=mode, seed=3)
    large = make_episodes(c, users, max_shots=20, mode=mode, seed=3)
    np.testing.assert_array_equal(small.query, large.query)
    np.testing.assert_array_equal(small.pool, large.pool[:, :5])
    other = make_episodes(c, users, max_shots=20, mode=mode, seed=4)
    assert not np.array_equal(other.query, large.query)


def shared_items(c, ep):
    return [
        np.intersect1d(np.union1d(c.a[s], c.b[s]), np.union1d(c.a[q], c.b[q])).size
        for s, q in zip(rows_of(ep.pool), rows_of(ep.query))
    ]


def dense_ratings(n_users=30, n_items=12, seed=0):
    """Every user compares every pair of the same n_items items (a dense rating table)."""
    i, j = np.triu_indices(n_items, 1)
    user = np.repeat(np.arange(n_users), len(i))
    label = np.random.default_rng(seed).integers(0, 2, len(user))
    return Comparisons.from_arrays(user, np.tile(i, n_users), np.tile(j, n_users), label)


def sparse_choices(n_users=30, per_user=16):
    """Choice data: every comparison has two items of its own, never seen again."""
    n = n_users * per_user
    return Comparisons.from_arrays(np.repeat(np.arange(n_users), per_user), 2 * np.arange(n), 2 * np.arange(n) + 1, np.ones(n))


def test_item_disjoint_support_shares_no_item_with_query(tiny_dataset, users):
    c = tiny_dataset.comparisons
    disjoint = make_episodes(c, users, max_shots=50, mode="item_disjoint", seed=0)
    assert all(n == 0 for n in shared_items(c, disjoint))
    assert np.all(disjoint.pool_size > 0)
    # The random mode does share items here, so the check above is not vacuous.
    assert sum(shared_items(c, make_episodes(c, users, max_shots=50, mode="random", seed=0))) > 0


@pytest.mark.parametrize("data", ["dense", "sparse"])
def test_item_split_on_dense_ratings_and_on_choice_data(data):
    """The item split leaves a support pool and a query on dense data (where a query of random
    pairs touches every item) and on choice data (items never repeat), and no query item is in
    that user's support at any k."""
    c = dense_ratings() if data == "dense" else sparse_choices()
    users = np.arange(30)
    for seed in range(3):
        ep = make_episodes(c, users, max_shots=50, mode="item_disjoint", seed=seed)
        assert all(n == 0 for n in shared_items(c, ep))
        n_query = (ep.query >= 0).sum(axis=1)
        if data == "dense":  # 6 + 6 items: C(6, 2) = 15 pairs within each half
            np.testing.assert_array_equal(ep.pool_size, 15)
            np.testing.assert_array_equal(n_query, 15)
        else:  # 16 pairs of 32 items: about a quarter land in each half
            assert ep.pool_size.mean() > 2 and n_query.mean() > 2
        for u, s, q in zip(users, rows_of(ep.pool), rows_of(ep.query)):
            assert np.all(c.user[s] == u) and np.all(c.user[q] == u)
    if data == "dense":  # the random mode on the same data shares nearly every item
        assert min(shared_items(c, make_episodes(c, users, max_shots=50, mode="random", seed=0))) > 0


def test_no_copy_of_a_query_comparison_is_in_the_pool():
    """A user who made the same comparison twice (in either order): never one copy in the
    support and the other in the query."""
    user = np.zeros(40, np.int64)
    a = np.tile(np.arange(20), 2)
    b = np.concatenate([np.arange(20) + 20, np.arange(20) + 20])
    a[20:], b[20:] = b[20:].copy(), a[20:].copy()  # the second copy shows the items swapped
    c = Comparisons.from_arrays(user, a, b, np.ones(40))
    for seed in range(5):
        ep = make_episodes(c, np.array([0]), max_shots=40, mode="random", seed=seed)
        s, q = rows_of(ep.pool)[0], rows_of(ep.query)[0]
        pair = lambda r: {frozenset((int(x), int(y))) for x, y in zip(c.a[r], c.b[r])}  # noqa: E731
        assert not pair(s) & pair(q) and len(q) == 20 and len(s) < 20


def test_pool_sizes():
    counts = [1, 2, 7, 30]
    user = np.repeat(np.arange(4), counts)
    a = np.arange(len(user))  # no comparison repeats
    c = Comparisons.from_arrays(user, a, a + 100, np.ones(len(user), np.float32))
    ep = make_episodes(c, np.arange(4), max_shots=10, mode="random", seed=0)
    # random mode: the query is half the user's pairs (rounded up, at least one), the pool the rest.
    expected_query = [max(1, (n + 1) // 2) for n in counts]
    expected_pool = [min(10, n - q) for n, q in zip(counts, expected_query)]
    np.testing.assert_array_equal(ep.pool_size, expected_pool)
    np.testing.assert_array_equal((ep.pool >= 0).sum(axis=1), expected_pool)
    np.testing.assert_array_equal((ep.query >= 0).sum(axis=1), expected_query)
    assert ep.pool.shape == (4, 10)
    with pytest.raises(ValueError):
        make_episodes(c, np.arange(4), max_shots=10, mode="bogus", seed=0)


# --- MAP inference of user states ---------------------------------------------------------


def pal_a(seed=0, n_users=5, latent_dim=4):
    return PALA(PALConfig(n_prototypes=3, latent_dim=latent_dim), Dims(D, n_users), rngs=nnx.Rngs(seed))


def random_support(model, n_users, k, seed=0):
    """Support features [U, k, ...] of random item pairs."""
    rng = np.random.default_rng(seed)
    n = n_users * k
    e = lambda: jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
    feats = model.pair_features(PairEmbeddings(e_x=jnp.zeros((n, D)), has_prompt=jnp.zeros(n, bool), e_a=e(), e_b=e()))
    return jax.tree.map(lambda f: f.reshape(n_users, k, *f.shape[1:]), feats)


def head(model, states, feats):
    k = jax.tree.leaves(feats)[0].shape[1]
    return jax.vmap(lambda s, f: model.pair_logits(jnp.broadcast_to(s, (k, s.shape[0])), f))(states, feats)


def test_huge_prior_strength_returns_the_prior_mean():
    model = pal_a()
    feats = random_support(model, 4, 10)
    labels = jnp.asarray(np.random.default_rng(1).random((4, 10)) < 0.5, jnp.float32)
    prior_mean = jnp.array([0.5, -1.0, 0.2])
    states = fit_user_states(model, feats, labels, jnp.ones((4, 10)), prior_mean, 1e6)
    assert states.shape == (4, 3)
    np.testing.assert_allclose(np.asarray(states), np.broadcast_to(np.asarray(prior_mean), (4, 3)), atol=2e-3)


def test_no_prior_fits_separable_support():
    model = pal_a()
    model.prototypes[...] = 3.0 * jnp.eye(3, 4)
    U, k = 3, 12
    feats = random_support(model, U, 64, seed=2)
    # Labels a true state would give, keeping only pairs it decides with a margin.
    true_states = jnp.array([[6.0, -6.0, -6.0], [-6.0, 6.0, -6.0], [-6.0, -6.0, 6.0]])
    z_true = np.asarray(head(model, true_states, feats))
    keep = np.stack([np.flatnonzero(np.abs(z) > 1.0)[:k] for z in z_true])  # [U, k]
    feats = jax.tree.map(lambda f: jnp.take_along_axis(f, jnp.asarray(keep)[:, :, None], axis=1), feats)
    labels = jnp.asarray(np.take_along_axis(z_true, keep, axis=1) > 0, jnp.float32)
    prior_mean = model.population_user_state()
    states = fit_user_states(model, feats, labels, jnp.ones((U, k)), prior_mean, 0.0, steps=300)
    z_fit = np.asarray(head(model, states, feats))
    np.testing.assert_array_equal(z_fit > 0, np.asarray(labels) > 0.5)
    z_prior = np.asarray(head(model, jnp.broadcast_to(prior_mean, (U, 3)), feats))
    assert np.mean((z_prior > 0) == (np.asarray(labels) > 0.5)) < 1.0  # the prior alone does not fit it


def test_map_finds_the_users_prototype():
    """Users who are exactly prototype j: 20 noisy shots put most of the weight on j."""
    model = pal_a(latent_dim=4)
    layer = model.item_map.layers[0]
    layer.kernel[...] = jnp.eye(D, 4)  # f(e) = the first 4 coordinates of e
    layer.bias[...] = jnp.zeros(4)
    model.prototypes[...] = jnp.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    model.log_temperature[...] = jnp.asarray(0.0)
    U, k = 3, 20
    feats = random_support(model, U, k, seed=5)
    true_states = 10.0 * (jnp.eye(3) - 0.5)  # user j ~ prototype j
    p = jax.nn.sigmoid(head(model, true_states, feats))
    labels = jnp.asarray(np.random.default_rng(6).random((U, k)) < np.asarray(p), jnp.float32)
    states = model.infer_user(feats, labels, jnp.ones((U, k)), prior_strength=1.0)
    weights = np.asarray(jax.nn.softmax(states, axis=-1))
    np.testing.assert_array_equal(weights.argmax(axis=1), [0, 1, 2])
    assert np.all(weights[np.arange(3), np.arange(3)] > 0.5)


def test_bt_has_no_user_state_to_fit():
    model = BT(BTConfig(), Dims(D, 5), rngs=nnx.Rngs(0))
    feats = random_support(model, 2, 4)
    states = model.infer_user(feats, jnp.ones((2, 4)), jnp.ones((2, 4)), prior_strength=1.0)
    assert states.shape == (2, 0)


def test_adapt_and_predict_uses_only_the_first_k_shots(tiny_dataset):
    model = pal_a(n_users=tiny_dataset.n_users)
    graphdef, params = nnx.split(model)
    tables = make_tables(tiny_dataset)
    c = tiny_dataset.comparisons
    ep = make_episodes(c, np.arange(6), max_shots=10, mode="random", seed=0)
    support, query = padded_batch(c, ep.pool), padded_batch(c, ep.query)
    adapt = fewshot.make_adapt_and_predict(graphdef, steps=50, learning_rate=0.1)

    seen_users = jnp.arange(10, 60)  # the prior mean averages these users' states only
    states0, logits0 = adapt(params, tables, support, jnp.int32(0), query, jnp.float32(1.0), seen_users)
    prior = np.asarray(model.population_user_state(seen_users))
    np.testing.assert_allclose(np.asarray(states0), np.broadcast_to(prior, (6, 3)), atol=1e-6)
    assert logits0.shape == query.label.shape

    states5, _ = adapt(params, tables, support, jnp.int32(5), query, jnp.float32(1.0), seen_users)
    assert not np.allclose(np.asarray(states5), np.asarray(states0))
    flipped = support.replace(label=support.label.at[:, 5:].set(1.0 - support.label[:, 5:]))
    states5_flipped, _ = adapt(params, tables, flipped, jnp.int32(5), query, jnp.float32(1.0), seen_users)
    np.testing.assert_array_equal(np.asarray(states5_flipped), np.asarray(states5))
    states6_flipped, _ = adapt(params, tables, flipped, jnp.int32(6), query, jnp.float32(1.0), seen_users)
    states6, _ = adapt(params, tables, support, jnp.int32(6), query, jnp.float32(1.0), seen_users)
    assert not np.allclose(np.asarray(states6_flipped), np.asarray(states6))




def test_a_grid_of_settings_equals_each_setting_alone_on_the_whole_pool(tiny_dataset, monkeypatch):
    """`predict_users` scores a grid of (k, setting) pairs with the pool trimmed to the support's
    width: each entry equals that setting alone on the whole, untrimmed pool."""
    from pluralign.models import PALB

    model = PALB(PALConfig(name="pal_b", n_prototypes=3, latent_dim=4), Dims(tiny_dataset.dim, tiny_dataset.n_users),
                 rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tables, c = make_tables(tiny_dataset), tiny_dataset.comparisons
    ep = make_episodes(c, np.unique(c.user)[:20], max_shots=10, mode="random", seed=0)
    adapt = fewshot.make_adapt_and_predict(graphdef, 30, 0.1, "bayes")
    seen = jnp.arange(20, 60)
    settings = [0.001, 0.03, 0.3, 1.0, 3.0, 30.0, 1000.0]
    rows = np.arange(len(ep.users))
    many = fewshot.predict_users(adapt, params, tables, c, ep, rows, [(3, s) for s in settings], seen)
    pool, query = padded_batch(c, ep.pool), padded_batch(c, ep.query)
    for i, s in enumerate(settings):
        alone = np.asarray(adapt(params, tables, pool, jnp.int32(3), query, jnp.float32(s), seen)[1])
        np.testing.assert_allclose(many[i], alone, atol=2e-3, err_msg=f"setting {s}")
    # A query longer than one call's block (QUERY_BLOCK pairs) is scored in blocks with the same support
    # (a 64-pair block here: the width the calls above compiled, so no new program).
    assert ep.query.shape[1] <= 64
    monkeypatch.setattr(fewshot, "QUERY_BLOCK", 64)
    repeats = fewshot.QUERY_BLOCK // ep.query.shape[1] + 2
    long = dataclasses.replace(ep, query=np.tile(ep.query, (1, repeats)))
    assert long.query.shape[1] > fewshot.QUERY_BLOCK
    widths = []

    def recording(params, tables, pool, k, query, *rest):
        widths.append(query.label.shape[1])
        return adapt(params, tables, pool, k, query, *rest)

    blocks = fewshot.predict_users(recording, params, tables, c, long, rows, [(3, 0.3)], seen)[0]
    np.testing.assert_allclose(blocks, np.tile(many[settings.index(0.3)], (1, repeats)), atol=1e-5)
    assert widths == [fewshot.QUERY_BLOCK] * -(-long.query.shape[1] // fewshot.QUERY_BLOCK)  # memory bounded by the block


def test_no_answers_is_the_prior_in_closed_form(tiny_dataset):
    """A 0-shot call skips the fit (`base.prior_posterior`): its states and posterior-predictive
    logits equal a Laplace fit on a support whose weights are all 0, at each prior scale."""
    from pluralign.models import base

    model = pal_a(n_users=tiny_dataset.n_users)
    graphdef, params = nnx.split(model)
    tables, c = make_tables(tiny_dataset), tiny_dataset.comparisons
    ep = make_episodes(c, np.arange(8), max_shots=5, mode="random", seed=0)
    pool, query = padded_batch(c, ep.pool), padded_batch(c, ep.query)
    seen = jnp.arange(10, 60)
    adapt = fewshot.make_adapt_and_predict(graphdef, 30, 0.1, "bayes")

    @jax.jit  # the reference, compiled once for the three scales (op by op it cost ~10 s of dispatch)
    def reference(scale):
        fitted = base.laplace_posterior(model, fewshot.user_pair_features(model, tables, pool), pool.label,
                                        jnp.zeros_like(pool.weight), base.empirical_prior(model, seen),
                                        precision_scale=scale, steps=30)
        return model.canonical_user_state(fitted[0]), base.posterior_logits(model, *fitted, fewshot.user_pair_features(model, tables, query))

    for scale in (0.01, 1.0, 100.0):
        states, logits = adapt(params, tables, pool, jnp.int32(0), query, jnp.float32(scale), seen)
        fitted_states, expected = reference(jnp.float32(scale))
        np.testing.assert_allclose(np.asarray(states), np.asarray(fitted_states), atol=1e-6)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, err_msg=f"scale {scale}")
        assert np.std(np.asarray(logits)) > 0  # not a constant: the population's own predictions
