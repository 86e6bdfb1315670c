"""Empirical-Bayes few-shot inference (pluralign.models.base: empirical_prior, laplace_posterior,
predictive_logits; fewshot.make_adapt_and_predict(inference="bayes"))."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.evaluate import fewshot
from pluralign.evaluate.fewshot import make_episodes
from pluralign.models import PALA, Dims, PairEmbeddings, PALConfig, base
from pluralign.models.lore import LoRe, LoReConfig
from pluralign.run import warn_if_degenerate_seen_states
from pluralign.train.batches import make_tables, padded_batch

D, RANK = 8, 3


def np_ledoit_wolf(x):
    """Ledoit & Wolf (2004), written out in float64 from the paper's definitions."""
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2)
    b2 = min(sum(np.sum((np.outer(v, v) - s) ** 2) for v in x) / n**2, d2)
    a = b2 / d2
    return a * mu * np.eye(p) + (1 - a) * s


@pytest.mark.parametrize("n", [5, 2000])
def test_ledoit_wolf_matches_the_formula_and_shrinks_only_when_data_are_few(n):
    rng = np.random.default_rng(n)
    true = np.diag([4.0, 1.0, 0.25])
    x = rng.multivariate_normal(np.zeros(3), true, size=n)
    got = np.asarray(base.ledoit_wolf(jnp.asarray(x, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, np_ledoit_wolf(x), rtol=1e-4, atol=1e-5)
    if n == 2000:
        np.testing.assert_allclose(got, true, rtol=0.15, atol=0.05)


def lore(n_users=40, seed=0, dim=D, population_stage=True) -> LoRe:
    model = LoRe(LoReConfig(hidden=[16], rank=RANK, residual_dim=0, population_stage=population_stage),
                 Dims(dim=dim, n_users=n_users), rngs=nnx.Rngs(seed))
    spread = jnp.asarray(np.random.default_rng(seed).standard_normal((n_users, RANK)) * [2.0, 1.0, 0.5], jnp.float32)
    model.user_weights[...] = spread
    return model


def support(model, U, k, seed=1):
    rng = np.random.default_rng(seed)
    e = lambda: jnp.asarray(rng.standard_normal((U * k, D)), jnp.float32)  # noqa: E731
    feats = model.pair_features(PairEmbeddings(e_x=jnp.zeros((U * k, D)), has_prompt=jnp.zeros(U * k, bool), e_a=e(), e_b=e()))
    return jax.tree.map(lambda f: f.reshape(U, k, *f.shape[1:]), feats)


def test_prior_is_fitted_to_the_seen_states_around_the_population_state():
    model = lore()
    seen = jnp.arange(40)
    prior = base.empirical_prior(model, seen)
    np.testing.assert_array_equal(prior.mean, np.zeros(RANK))  # lore's population state: w = 0 (BT)
    w = np.asarray(model.user_weights[...], np.float64)
    expected = np_ledoit_wolf(w)  # scatter about the known mean 0
    expected += 1e-3 * np.trace(expected) / RANK * np.eye(RANK)
    np.testing.assert_allclose(prior.cov, expected, rtol=1e-4, atol=1e-5)


def test_pal_prior_lives_in_centred_logits():
    model = PALA(PALConfig(n_prototypes=3, latent_dim=4), Dims(dim=D, n_users=30), rngs=nnx.Rngs(0))
    prior = base.empirical_prior(model, jnp.arange(30))
    np.testing.assert_allclose(np.asarray(prior.mean).sum(), 0.0, atol=1e-5)
    np.testing.assert_allclose(jax.nn.softmax(prior.mean), jax.nn.softmax(model.population_user_state(jnp.arange(30))), rtol=1e-5)
    # The seen states have no spread along the shift direction (1, 1, 1), which the logits ignore;
    # shrinkage and the floor still give the prior full rank, so the whitened fit is well defined.
    assert np.asarray(prior.sample_eigenvalues).min() < 1e-6
    assert np.all(np.linalg.eigvalsh(np.asarray(prior.cov)) > 0)


def test_zero_shots_give_the_prior_itself():
    model = lore()
    prior = base.empirical_prior(model, jnp.arange(40))
    feats = support(model, 2, 5)
    fit = jax.jit(lambda f, y, w: base.laplace_posterior(model, f, y, w, prior, precision_scale=2.0))  # one program, not eager ops
    means, covs = fit(feats, jnp.ones((2, 5)), jnp.zeros((2, 5)))
    np.testing.assert_array_equal(means, np.zeros((2, RANK)))
    np.testing.assert_allclose(covs, np.broadcast_to(np.asarray(prior.cov) / 2.0, (2, RANK, RANK)), rtol=1e-4, atol=1e-6)


def test_laplace_is_the_exact_map_and_hessian_for_a_head_linear_in_the_state():
    """lore's logit is linear in w: the negative log posterior is convex, Newton makes the MAP exact,
    and the covariance is the inverse of (prior precision + Σ p(1 − p) d dᵀ), recomputed in numpy."""
    model = lore()
    prior = base.empirical_prior(model, jnp.arange(40))
    U, k = 3, 12
    feats = support(model, U, k)
    labels = jnp.asarray(np.random.default_rng(3).random((U, k)) < 0.5, jnp.float32)
    means, covs = jax.jit(lambda f, y, w: base.laplace_posterior(model, f, y, w, prior))(feats, labels, jnp.ones((U, k)))
    shared, diff = (np.asarray(f, np.float64) for f in feats)
    precision = np.linalg.inv(np.asarray(prior.cov, np.float64))
    for u in range(U):
        w = np.asarray(means[u], np.float64)
        p = 1 / (1 + np.exp(-(shared[u] + diff[u] @ w)))
        grad = diff[u].T @ (p - np.asarray(labels[u])) + precision @ w
        assert np.abs(grad).max() < 1e-3 * (1 + np.abs(precision).max())
        hessian = precision + (diff[u] * (p * (1 - p))[:, None]).T @ diff[u]
        np.testing.assert_allclose(covs[u], np.linalg.inv(hessian), rtol=2e-3, atol=1e-5)


def test_predictive_logits_match_monte_carlo_and_keep_the_sign():
    model = lore()
    feats = jax.tree.map(lambda f: f[0], support(model, 1, 50))
    mean = jnp.array([0.5, -1.0, 0.3])
    cov = jnp.asarray(np.diag([1.0, 0.5, 2.0]), jnp.float32)
    out = np.asarray(base.predictive_logits(model, mean, cov, feats))
    point = np.asarray(model.pair_logits(jnp.broadcast_to(mean, (50, RANK)), feats))
    np.testing.assert_array_equal(np.sign(out), np.sign(point))
    assert np.all(np.abs(out) <= np.abs(point) + 1e-6)
    samples = np.random.default_rng(0).multivariate_normal(np.asarray(mean), np.asarray(cov), size=20000)
    mc = np.mean(jax.nn.sigmoid(jax.vmap(lambda w: model.pair_logits(jnp.broadcast_to(w, (50, RANK)), feats))(jnp.asarray(samples, jnp.float32))), axis=0)
    np.testing.assert_allclose(jax.nn.sigmoid(out), mc, atol=0.02)  # the probit approximation's error
    np.testing.assert_allclose(base.predictive_logits(model, mean, jnp.zeros((RANK, RANK)), feats), point, rtol=1e-6)


@pytest.mark.parametrize("population_stage", [True, False])
def test_bayes_adaptation_at_zero_shots_is_the_population_model(tiny_dataset, population_stage):
    """No answers: BT's own logits where the shared reward was trained alone as BT (a fit of the
    population's marginal, `population_is_marginal`); BT's predictions with cautious odds (the
    prior predictive) where it was trained jointly with the user terms (the users' mean logit)."""
    model = lore(n_users=tiny_dataset.n_users, dim=tiny_dataset.dim, population_stage=population_stage)
    assert model.population_is_marginal == population_stage
    graphdef, params = nnx.split(model)
    tables = make_tables(tiny_dataset)
    c = tiny_dataset.comparisons
    ep = make_episodes(c, np.arange(6), max_shots=10, mode="random", seed=0)
    support_batch, query = padded_batch(c, ep.pool), padded_batch(c, ep.query)
    adapt = fewshot.make_adapt_and_predict(graphdef, steps=30, learning_rate=0.1, inference="bayes")
    seen = jnp.arange(10, 60)
    states, logits = adapt(params, tables, support_batch, jnp.int32(0), query, jnp.float32(1.0), seen)
    np.testing.assert_array_equal(states, np.zeros((6, RANK)))
    flat = jax.tree.map(lambda x: x.reshape(-1), query)
    bt_logits = np.asarray(model.pair_features(base.gather(tables, flat))[0]).reshape(query.label.shape)
    if population_stage:
        np.testing.assert_allclose(logits, bt_logits, rtol=1e-5, atol=1e-6)  # the population model itself
    else:
        np.testing.assert_array_equal(np.sign(logits), np.sign(bt_logits))  # BT's predictions, with cautious odds
        assert np.all(np.abs(np.asarray(logits)) <= np.abs(bt_logits) + 1e-6)
        assert np.abs(np.asarray(logits) - bt_logits).max() > 1e-3
    states5, logits5 = adapt(params, tables, support_batch, jnp.int32(5), query, jnp.float32(1.0), seen)
    assert not np.allclose(states5, 0.0) and not np.allclose(logits5, logits)


def test_collapsed_seen_states_are_reported(caplog):
    model = PALA(PALConfig(n_prototypes=4, latent_dim=4), Dims(dim=D, n_users=30), rngs=nnx.Rngs(0))
    with caplog.at_level(logging.WARNING, logger="pluralign.run"):
        warn_if_degenerate_seen_states(model, jnp.arange(30))
    assert not caplog.records  # random initial states vary in every centred direction
    model.user_mixture_logits[...] = jnp.broadcast_to(jnp.array([2.0, 0.0, 0.0, 0.0]), (30, 4)) + 1e-5 * model.user_mixture_logits[...]
    with caplog.at_level(logging.WARNING, logger="pluralign.run"):
        warn_if_degenerate_seen_states(model, jnp.arange(30))
    assert any("degenerate" in r.message for r in caplog.records)


def test_exported_reward_infers_new_users_as_the_bayes_evaluation(tmp_path, tiny_dataset):
    """An artifact of a run with eval.inference=bayes infers a new user's state (PersonalizedReward)
    as the evaluation's posterior mean; the online user follows the same posterior."""
    import pluralign
    from pluralign.data.splits import split_users
    from pluralign.export import OnlineUser, Support, save_model
    from pluralign.export.artifact import compute_seen_states

    data = tiny_dataset
    model = lore(n_users=data.n_users, dim=data.dim)
    graphdef, params = nnx.split(model)
    split = split_users(data.n_users, seed=0, unseen_val_fraction=0.15, unseen_test_fraction=0.25)
    stacked = jax.tree.map(lambda x: x[None], params)
    tables = make_tables(data)
    save_model(
        tmp_path / "model", model_config=LoReConfig(hidden=[16], rank=RANK, residual_dim=0), dims=Dims(dim=data.dim, n_users=data.n_users),
        params=stacked, seen_states=compute_seen_states(graphdef, stacked, tables, data.n_users), seeds=[0],
        dataset_meta=data.meta, seen_users=split.seen, split=split.to_dict(), prior_strength=0.5, inference="bayes",
        inference_steps=20, inference_learning_rate=0.1,
    )
    reward = pluralign.load(tmp_path / "model").reward(capacity=8)
    users = split.unseen_test[:3]
    c = data.comparisons
    ep = make_episodes(c, users, max_shots=6, mode="random", seed=1)
    adapt = fewshot.make_adapt_and_predict(graphdef, 20, 0.1, inference="bayes")
    states, _ = adapt(params, tables, padded_batch(c, ep.pool), jnp.int32(6), padded_batch(c, ep.query),
                      jnp.float32(0.5), jnp.asarray(split.seen))
    items = np.asarray(data.items, np.float32)
    for u in range(len(users)):
        rows = ep.pool[u, :6]
        sub = c.take(rows[rows >= 0])
        support_u = Support(e_a=items[sub.a], e_b=items[sub.b], label=sub.label)
        # Same computation on differently padded buffers (capacity 8 vs 6 pool slots): float32 noise only.
        np.testing.assert_allclose(reward.infer(support_u), states[u], rtol=1e-3, atol=5e-4)
    online = OnlineUser(reward, n_samples=16)
    for a, b, y in zip(items[sub.a], items[sub.b], sub.label):
        online.add(a, b, y)
    np.testing.assert_allclose(online.state, states[len(users) - 1], rtol=1e-3, atol=5e-4)


def lore_with_residual(n_users, v_std, seed=0, rank=1, dim=D):
    """A lore with the full-rank residual (d = D): seen w_u ~ N(0, 1), seen v_u ~ N(0, v_std²)."""
    model = LoRe(LoReConfig(hidden=[16], rank=rank, residual_dim=dim), Dims(dim=dim, n_users=n_users), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    model.user_weights[...] = jnp.asarray(rng.standard_normal((n_users, rank)), jnp.float32)
    model.residual_weights[...] = jnp.asarray(rng.standard_normal((n_users, dim)) * v_std, jnp.float32)
    return model


def test_residual_ratio_scales_only_the_residual_block():
    """Σ ↦ DΣD, D = diag(1, √ρ): the residual block's variances × ρ, its covariances with the basis
    weights × √ρ, the basis block as fitted; a model without a residual block ignores ρ."""
    model, seen = lore_with_residual(60, 0.3), jnp.arange(60)
    block = model.residual_block()
    assert block.tolist() == [False] + [True] * D
    plain, scaled = (np.asarray(base.empirical_prior(model, seen, residual_ratio=r).cov) for r in (1.0, 9.0))
    np.testing.assert_allclose(scaled[np.ix_(~block, ~block)], plain[np.ix_(~block, ~block)], rtol=1e-6)
    np.testing.assert_allclose(scaled[np.ix_(block, block)], 9.0 * plain[np.ix_(block, block)], rtol=1e-5)
    np.testing.assert_allclose(scaled[np.ix_(~block, block)], 3.0 * plain[np.ix_(~block, block)], rtol=1e-5, atol=1e-7)
    no_block = lore(n_users=30)
    assert no_block.residual_block() is None
    np.testing.assert_array_equal(base.empirical_prior(no_block, jnp.arange(30), residual_ratio=9.0).cov,
                                  base.empirical_prior(no_block, jnp.arange(30)).cov)


@pytest.mark.parametrize("seen_v_std, expect", [(0.1, (16.0, 64.0)), (1.0, (0.25, 4.0))])
def test_fitted_residual_ratio_undoes_a_shrunk_residual_block(seen_v_std, expect):
    """New users' v_u ~ N(0, I) while the seen states' v_u are 10× too small (jointly trained blocks
    shrink unequally): the query log-loss, minimised over ρ by `shrinkage.search_ratio`, restores
    the residual block's variance (ρ ≈ 100 on factors of 4, capped at 64); with seen states of the
    right size it stays within a factor 4 of 1."""
    from pluralign.evaluate.shrinkage import search_ratio

    U, k, q = 200, 12, 12
    model = lore_with_residual(300, seen_v_std)
    rng = np.random.default_rng(5)
    truth = jnp.asarray(np.concatenate([rng.standard_normal((U, 1)), rng.standard_normal((U, D))], axis=1), jnp.float32)

    def pairs(n):
        feats = support(model, U, n, seed=int(rng.integers(1 << 30)))
        logits = jax.vmap(lambda s, f: model.pair_logits(jnp.broadcast_to(s, (n, s.shape[0])), f))(truth, feats)
        labels = jnp.asarray(rng.random((U, n)) < np.asarray(jax.nn.sigmoid(logits)), jnp.float32)
        return feats, labels

    (s_feats, s_labels), (q_feats, q_labels) = pairs(k), pairs(q)

    @jax.jit
    def query_loss(ratio):  # one program for every ρ
        prior = base.empirical_prior(model, jnp.arange(300), residual_ratio=ratio)
        states, covs = base.laplace_posterior(model, s_feats, s_labels, jnp.ones((U, k)), prior, steps=50)
        z = base.posterior_logits(model, states, covs, q_feats)
        return jnp.mean(base.preference_loss(z, q_labels, jnp.ones_like(q_labels)))

    loss = lambda ratio: float(query_loss(jnp.float32(ratio)))  # noqa: E731

    ratio, tried = search_ratio(loss)
    assert expect[0] <= ratio <= expect[1], tried
    assert tried[ratio] == min(tried.values()) and tried[ratio] <= tried[1.0]
