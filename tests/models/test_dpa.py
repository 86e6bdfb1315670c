"""DPA / multi-objective rewards: stage-1 regression (ridge = normal equations, missing ratings
masked, penalty chosen on validation), verbosity decorrelation, the model's equations and loss,
directions on the unit sphere, arithmetic control, save/load, and end-to-end recovery of
planted user directions. Expected values are recomputed here in numpy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.checkpoint_io import restore_pytree, save_pytree
from pluralign.data.multi_attribute import MultiAttributeConfig, make_multi_attribute
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import DPAConfig, Dims, PairEmbeddings, base
from pluralign.models import multi_objective as mo
from pluralign.models.dpa import DPA, best_of_n_by_direction, rank_responses
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

D, N_USERS, M = 8, 5, 3
SMALL = MultiAttributeConfig(n_users=40, n_items=300, comparisons_per_user=20, dim=D, seed=1)


@pytest.fixture(scope="module")
def small_data():
    return make_multi_attribute(SMALL)


@pytest.fixture(scope="module")
def fitted(small_data):
    """A DPA after stage 1 on every item of the small data (shared by several tests; not mutated)."""
    return stage1_model(small_data)


def stage1_model(dataset, **overrides) -> tuple[DPA, dict]:
    config = DPAConfig(n_attributes=M, **overrides)
    graphdef, params = base.init(DPA, config, Dims(dim=dataset.dim, n_users=dataset.n_users), jax.random.PRNGKey(0))
    params, summary = DPA.prepare_params(config, dataset, np.arange(dataset.n_items), params)
    return nnx.merge(graphdef, params), summary


def make_pair(seed: int, n: int = 6) -> PairEmbeddings:
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return PairEmbeddings(
        e_x=jax.random.normal(k[0], (n, D)), has_prompt=jnp.arange(n) % 2 == 0,
        e_a=jax.random.normal(k[1], (n, D)), e_b=jax.random.normal(k[2], (n, D)),
    )


# --- stage 1 -----------------------------------------------------------------------------------


def test_ridge_matches_the_normal_equations():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal(50) + 3.0
    alphas = [0.1, 10.0]
    w, b = mo.ridge_solution(x, y, alphas)
    for i, alpha in enumerate(alphas):
        # [X 1]ᵀ[X 1] θ + diag(α,…,α,0) θ = [X 1]ᵀ y: the intercept is not penalised.
        xa = np.concatenate([x, np.ones((50, 1))], axis=1)
        penalty = np.diag([alpha] * 6 + [0.0])
        theta = np.linalg.solve(xa.T @ xa + penalty, xa.T @ y)
        np.testing.assert_allclose(w[i], theta[:6], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(b[i], theta[6], rtol=1e-8)


def test_ridge_penalty_is_chosen_on_validation_items():
    rng = np.random.default_rng(1)
    # Few items, many noise dimensions: a tiny penalty overfits, a moderate one generalises.
    x = rng.standard_normal((60, 40))
    y = (x[:, :1] + 0.5 * rng.standard_normal((60, 1))).astype(np.float64)
    fit = mo.fit_ridge_heads(x, y, alphas=[1e-6, 10.0], val_fraction=0.3, seed=0)
    train, val = mo.split_items(60, 0.3, 0)
    w, b = mo.ridge_solution(x[train], y[train, 0], [1e-6, 10.0])
    val_mse = np.mean(np.square(x[val] @ w.T + b - y[val]), axis=0)
    assert fit.alpha[0] == [1e-6, 10.0][int(np.argmin(val_mse))] == 10.0
    np.testing.assert_allclose(fit.val_mse[0], val_mse.min())


def test_missing_ratings_are_masked_not_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((80, 5))
    y = x @ rng.standard_normal((5, 2)) + 2.0
    y[rng.random(y.shape) < 0.3] = np.nan
    fit = mo.fit_ridge_heads(x, y, alphas=[1.0])
    for j in range(2):
        observed = ~np.isnan(y[:, j])
        w, b = mo.ridge_solution(x[observed], y[observed, j], [1.0])
        np.testing.assert_allclose(fit.kernel[:, j], w[0], rtol=1e-8)
        w0, _ = mo.ridge_solution(x, np.nan_to_num(y[:, j]), [1.0])  # NaN read as 0: a different fit
        assert not np.allclose(fit.kernel[:, j], w0[0], atol=1e-2)
    # The MLP head's loss counts observed entries only.
    pred = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    observed = ~np.isnan(y)
    expected = np.mean(np.square(np.asarray(pred)[observed] - y[observed]))
    np.testing.assert_allclose(mo.masked_mse(pred, jnp.asarray(y, jnp.float32), jnp.asarray(observed)), expected, rtol=1e-5)


@pytest.mark.slow
def test_mlp_head_regresses_attributes_with_missing_ratings(small_data):
    mlp, val_mse = mo.fit_mlp_head(np.asarray(small_data.items), small_data.attributes, (16,), steps=300, learning_rate=1e-2)
    r2 = mo.masked_r2(np.asarray(mlp(jnp.asarray(small_data.items))), small_data.attributes)
    assert np.isfinite(val_mse) and np.all(r2 > 0.7), r2


def test_decorrelation_brings_rank_correlation_under_threshold():
    rng = np.random.default_rng(3)
    verbosity = rng.standard_normal(500)
    rewards = np.stack([rng.standard_normal(500) + 0.8 * verbosity, rng.standard_normal(500) - 0.5 * verbosity, verbosity], axis=1)
    assert abs(mo.spearman(rewards[:, 0], verbosity)) > 0.4 and abs(mo.spearman(rewards[:, 1], verbosity)) > 0.3
    penalties = mo.decorrelation_penalties(rewards, 2, threshold=0.03)
    assert penalties[2] == 0.0 and penalties[0] > 0 > penalties[1]  # the sign follows the correlation
    adjusted = rewards @ mo.reward_transform(penalties, 2)
    np.testing.assert_allclose(adjusted[:, 0], rewards[:, 0] - penalties[0] * verbosity)
    np.testing.assert_array_equal(adjusted[:, 2], verbosity)  # verbosity itself stays available
    for i in (0, 1):
        assert abs(mo.spearman(adjusted[:, i], verbosity)) <= 0.03
        # ... and λ is the smallest such: a visibly smaller penalty is not enough.
        assert abs(mo.spearman(rewards[:, i] - 0.8 * penalties[i] * verbosity, verbosity)) > 0.03


def test_decorrelation_is_applied_at_inference(small_data, fitted):
    model, summary = fitted
    v = small_data.meta["attribute_names"].index("verbosity")
    r = np.asarray(model.attribute_rewards(jnp.asarray(small_data.items)))
    for i in range(M):
        if i != v:
            assert abs(mo.spearman(r[:, i], r[:, v])) <= 0.03
    raw, _ = stage1_model(small_data, decorrelate="")
    assert abs(mo.spearman(np.asarray(raw.attribute_rewards(jnp.asarray(small_data.items)))[:, 0], r[:, v])) > 0.1
    assert summary["penalties"][v] == 0.0 and len(summary["ridge_alpha"]) == M


def test_prepare_params_refuses_data_it_cannot_use(small_data):
    with pytest.raises(ValueError, match="n_attributes=4"):
        DPA.prepare_params(DPAConfig(n_attributes=4), small_data, np.arange(10), None)
    with pytest.raises(ValueError, match="decorrelate='length'"):
        DPA.prepare_params(DPAConfig(decorrelate="length"), small_data, np.arange(10), None)
    no_attributes = dataclasses.replace(small_data, attributes=None)
    with pytest.raises(ValueError, match="attributes.npy"):
        DPA.prepare_params(DPAConfig(), no_attributes, np.arange(10), None)
    with pytest.raises(ValueError, match="head"):
        DPAConfig(head="linear")


# --- the model ----------------------------------------------------------------------------------


def make_model(seed: int = 0, **overrides) -> DPA:
    model = DPA(DPAConfig(n_attributes=M, **overrides), Dims(dim=D, n_users=N_USERS), rngs=nnx.Rngs(seed))
    model.logit_scale[...] = jnp.asarray(0.3)
    model.gate_logit_scale[...] = jnp.asarray(-0.2)
    model.reward_transform[...] = jnp.asarray(mo.reward_transform(np.array([0.5, -0.2, 0.0]), 2), jnp.float32)
    return model


def test_shapes_and_equations():
    model, pair = make_model(), make_pair(0)
    diff, gate_logit = model.pair_features(pair)
    assert diff.shape == (6, M) and gate_logit.shape == (6,)
    users = jnp.array([0, 1, 2, 3, 4, 0])
    logit = model.pair_logits(model.user_table_state(users), (diff, gate_logit))
    # numpy: r' = (e W + b) T, v = W_u/‖W_u‖, logit = exp(t) vᵀ(r'_a − r'_b)
    layer = model.head.layers[0]
    kernel, bias, transform = (np.asarray(p[...]) for p in (layer.kernel, layer.bias, model.reward_transform))
    r = lambda e: (np.asarray(e) @ kernel + bias) @ transform
    w = np.asarray(model.user_directions[...])[np.asarray(users)]
    v = w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(logit, np.exp(0.3) * np.sum(v * (r(pair.e_a) - r(pair.e_b)), axis=1), rtol=1e-5, atol=1e-6)
    weights = np.asarray(model.gate_weights(pair.e_x, pair.has_prompt))
    assert np.all(weights >= 0) and np.allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(gate_logit, np.exp(-0.2) * np.sum(weights * (r(pair.e_a) - r(pair.e_b)), axis=1), rtol=1e-5, atol=1e-6)
    states = model.user_table_state(users)
    np.testing.assert_allclose(logit, model.reward(states, pair.e_x, pair.has_prompt, pair.e_a) - model.reward(states, pair.e_x, pair.has_prompt, pair.e_b), rtol=1e-5, atol=1e-5)
    assert model.population_user_state().shape == (M,)


def test_loss_known_value():
    model = make_model(gate_loss_weight=0.5)
    tables = base.Tables(items=jax.random.normal(jax.random.PRNGKey(1), (10, D)), prompts=jnp.zeros((1, D)))
    batch = base.PairBatch(
        user=jnp.array([0, 1, 2], jnp.int32), prompt=jnp.full((3,), -1, jnp.int32), a=jnp.array([0, 2, 4], jnp.int32),
        b=jnp.array([1, 3, 5], jnp.int32), label=jnp.array([1.0, 0.0, 0.7]), weight=jnp.array([1.0, 2.0, 0.0]),
    )
    total, metrics = base.loss(model, tables, batch)
    features = model.pair_features(base.gather(tables, batch))
    user_logit = np.asarray(model.pair_logits(model.user_table_state(batch.user), features))
    bce = lambda z, y: -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 / (1 + np.exp(z))))
    y, w = np.array([1.0, 0.0, 0.7]), np.array([1.0, 2.0, 0.0])
    expected = (w * bce(user_logit, y)).sum() / 3 + 0.5 * (w * bce(np.asarray(features[1]), y)).sum() / 3
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert set(metrics) >= {"loss", "accuracy", "gate_loss"}


@pytest.mark.slow
def test_frozen_attribute_head_gets_no_gradient():
    tables = base.Tables(items=jax.random.normal(jax.random.PRNGKey(1), (10, D)), prompts=jnp.zeros((1, D)))
    batch = base.PairBatch(
        user=jnp.array([0, 1], jnp.int32), prompt=jnp.full((2,), -1, jnp.int32), a=jnp.array([0, 2], jnp.int32),
        b=jnp.array([1, 3], jnp.int32), label=jnp.array([1.0, 0.0]), weight=jnp.ones(2),
    )
    for freeze in (True, False):
        graphdef, state = nnx.split(make_model(freeze_attributes=freeze))
        grads = jax.jit(jax.grad(lambda s: base.loss(nnx.merge(graphdef, s), tables, batch)[0]))(state)
        head_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["head"]))
        assert (head_norm == 0.0) == freeze
        assert float(jnp.abs(grads["logit_scale"][...])) > 0 and all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grads["reward_transform"]))


def test_save_load_gives_the_same_predictions(tmp_path):
    model, pair = make_model(), make_pair(3)
    states = model.user_table_state(jnp.array([0, 1, 2, 3, 4, 0]))
    expected = np.asarray(base.logits(model, states, pair))
    _, state = nnx.split(model)
    save_pytree(tmp_path / "ckpt", state)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make_model(seed=9)))
    loaded = nnx.merge(graphdef, restore_pytree(tmp_path / "ckpt", abstract))
    np.testing.assert_array_equal(np.asarray(base.logits(loaded, loaded.user_table_state(jnp.array([0, 1, 2, 3, 4, 0])), pair)), expected)


# --- directions ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_few_shot_directions_have_unit_norm_and_recover_planted_ones(small_data):
    """Stage 1 on the data, then the few-shot fit from 60 comparisons per synthetic user."""
    model, _ = stage1_model(small_data)
    beta = SMALL.sharpness
    model.logit_scale[...] = jnp.asarray(np.log(beta), jnp.float32)
    rng = np.random.default_rng(4)
    true = rng.standard_normal((12, M))
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    z = np.asarray(small_data.meta["truth"]["item_attributes"])
    a, b = rng.integers(0, 300, (12, 60)), rng.integers(0, 300, (12, 60))
    p = 1 / (1 + np.exp(-beta * np.einsum("ukm,um->uk", z[a] - z[b], true)))
    labels = jnp.asarray(rng.random(p.shape) < p, jnp.float32)
    items = jnp.asarray(small_data.items)
    pair = PairEmbeddings(e_x=jnp.zeros((720, D)), has_prompt=jnp.zeros(720, bool), e_a=items[a.ravel()], e_b=items[b.ravel()])
    features = jax.tree.map(lambda f: f.reshape(12, 60, *f.shape[1:]), model.pair_features(pair))
    states = model.infer_user(features, labels, jnp.ones((12, 60)), prior_mean=jnp.ones(M) / np.sqrt(M), prior_strength=0.0, steps=200)
    np.testing.assert_allclose(np.linalg.norm(states, axis=1), 1.0, rtol=1e-5)
    implied = np.asarray(states) @ np.asarray(model.reward_transform[...]).T  # v̂ᵀ r' = (T v̂)ᵀ r
    implied /= np.linalg.norm(implied, axis=1, keepdims=True)
    cos = np.sum(implied * true, axis=1)
    assert cos.mean() > 0.9 and cos.min() > 0.7, cos


def test_arithmetic_control_follows_the_direction(small_data, fitted):
    model, _ = fitted
    items = jnp.asarray(small_data.items[:40])
    r = np.asarray(model.attribute_rewards(items))
    v = small_data.meta["attribute_names"].index("verbosity")
    np.testing.assert_array_equal(np.asarray(rank_responses(model, np.eye(M)[v], items)), np.argsort(-r[:, v]))
    direction = mo.direction_from_angle(30.0, M, 0, v)
    np.testing.assert_allclose(direction, [np.cos(np.pi / 6), 0, np.sin(np.pi / 6)], atol=1e-12)
    pools = items.reshape(4, 10, D)
    np.testing.assert_array_equal(np.asarray(best_of_n_by_direction(model, 3.0 * direction, pools)), mo.best_of_n_from_rewards(r.reshape(4, 10, M), direction))


@pytest.mark.slow
def test_dpa_run_recovers_users_end_to_end(tmp_path):
    """Stage 1 + comparison training via `run`: near Bayes-optimal for seen users, above the best
    non-personalized predictor, and unseen users' accuracy grows with shots."""
    # 70 seen users × 60 pairs: ~670 seen test pairs (accuracy std ≈ 0.015); Bayes − population ≈ 0.11.
    data = MultiAttributeConfig(n_users=100, n_items=300, comparisons_per_user=60, dim=D, seed=2)
    results = run(
        RunConfig(
            model=DPAConfig(n_attributes=M), data=data, cache_dir=str(tmp_path / "cache"),
            train=TrainConfig(progress=False, max_epochs=25, batch_size=128, learning_rate=0.02, patience=5, checkpoint=False),
            eval=EvalConfig(shots=[1, 20], modes=["random"], draws=1, prior_strengths=[3.0], pair_test_fraction=0.2),
        ),
        tmp_path / "run",
    )
    bayes, population = results["bayes_optimal_accuracy"], results["population_optimal_accuracy"]
    assert results["seen"]["accuracy"] > bayes - 0.06 and results["seen"]["accuracy"] > population + 0.05
    curve = results["unseen"]["accuracy_at_k"]
    assert curve[20] > curve[1] + 0.02 and curve[20] > bayes - 0.06
    assert np.all(np.asarray(results["stage1"]["train_r2"]) > 0.8)
