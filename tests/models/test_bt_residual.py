"""BT's reward plus a full-rank per-user linear residual through a fixed projection
(pluralign.models.residual), and the same term in lore (`residual_dim > 0`).

v_u = 0 is BT exactly; the projection is a whitened PCA (identity up to scale when D ≤ d),
never moved by training, and saved and restored with the model; few-shot empirical-Bayes
inference recovers a planted per-user linear deviation and beats the population model on
that user's held-out pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pluralign
from pluralign.data import Comparisons
from pluralign.data.format import PreferenceDataset
from pluralign.export.artifact import compute_seen_states, save_model
from pluralign.models import BT, BTConfig, Dims, base
from pluralign.models.lore import LoRe, LoReConfig
from pluralign.models.residual import BTResidual, BTResidualConfig, fit_projection
from pluralign.train.batches import make_tables, to_batch
from pluralign.train.trainer import TrainConfig, Trainer, init_params
from tests.models.helpers import D, make_pair

N_USERS = 5


def make_model(residual_dim=4, **overrides) -> BTResidual:
    return BTResidual(BTResidualConfig(hidden=[16], residual_dim=residual_dim, **overrides), Dims(dim=D, n_users=N_USERS),
                      rngs=nnx.Rngs(0))


def copy_bt_into(model, seed=7) -> BT:
    """A BT with its own random θ, copied into `model`'s shared reward."""
    bt = BT(BTConfig(hidden=[16]), Dims(dim=D, n_users=N_USERS), rngs=nnx.Rngs(seed))
    nnx.update(model.reward_net, nnx.state(bt.reward_net))
    nnx.update(model.null_prompt, nnx.state(bt.null_prompt))
    return bt


def test_zero_state_is_bt_exactly_and_a_state_adds_its_projected_difference():
    model = make_model()
    bt = copy_bt_into(model)
    model.residual_projection.matrix[...] = jnp.asarray(np.random.default_rng(0).standard_normal((D, 4)), jnp.float32)
    pair = make_pair(0)
    zero = jnp.zeros((6, 4))
    np.testing.assert_array_equal(base.logits(model, zero, pair), base.logits(bt, jnp.zeros((6, 0)), pair))
    np.testing.assert_array_equal(model.reward(zero, pair.e_x, pair.has_prompt, pair.e_a),
                                  bt.reward(zero, pair.e_x, pair.has_prompt, pair.e_a))
    assert np.all(np.asarray(model.population_user_state()) == 0.0)
    v = jnp.asarray(np.random.default_rng(1).standard_normal((6, 4)), jnp.float32)
    P_t = np.asarray(model.residual_projection.matrix[...])  # Pᵀ [D, d]
    expected = np.sum(np.asarray(v) * (np.asarray(pair.e_a - pair.e_b) @ P_t), -1) / 2.0  # / √d, d = 4
    np.testing.assert_allclose(base.logits(model, v, pair) - base.logits(bt, jnp.zeros((6, 0)), pair), expected, rtol=1e-4, atol=1e-5)
    # rewards of N responses agree with reward one at a time, and their differences are the logits
    r = model.rewards(v[:2], pair.e_x[:2], pair.has_prompt[:2], jnp.stack([pair.e_a[:2], pair.e_b[:2]], axis=1))  # [2, 2]
    np.testing.assert_allclose(r[:, 0] - r[:, 1], base.logits(model, v, pair)[:2], rtol=1e-5, atol=1e-5)


def test_projection_is_whitened_pca_or_identity():
    rng = np.random.default_rng(0)
    scales = np.where(np.arange(D) == D - 1, 3.0, np.linspace(0.1, 1.0, D))  # one dominant axis
    items = rng.standard_normal((400, D)) * scales + 5.0  # anisotropic, off-centre
    P_t, summary = fit_projection(items, 4)
    assert summary["projection"] == "pca_whitened" and P_t.shape == (D, 4)
    coords = (items - items.mean(0)) @ P_t
    np.testing.assert_allclose(np.cov(coords.T), np.eye(4), atol=1e-4)  # unit-variance, uncorrelated coordinates
    # the top component is the highest-variance embedding axis
    assert np.argmax(np.abs(P_t[:, 0])) == D - 1
    P_t, summary = fit_projection(items, 64)  # D ≤ d: the identity over the RMS std
    assert summary["projection"] == "identity" and P_t.shape == (D, D)
    np.testing.assert_allclose(P_t, np.eye(D) / summary["rms_std"], rtol=1e-6)
    assert BTResidual.state_dim(BTResidualConfig(residual_dim=64), Dims(dim=D, n_users=1)) == D


def test_loss_known_value():
    model = make_model(residual_prior_strength=0.3)
    tables, batch = _tiny()
    value, metrics = model.loss(tables, batch, None)
    e = base.gather(tables, batch)
    v = np.asarray(model.residual_weights[...], np.float64)[np.asarray(batch.user)]
    z = np.asarray(base.logits(model, jnp.asarray(v, jnp.float32), e), np.float64)
    y, wt = np.asarray(batch.label, np.float64), np.asarray(batch.weight, np.float64)
    ce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 / (1 + np.exp(z))))
    expected = (wt * ce).sum() / wt.sum() + 0.3 * (wt * 0.5 * np.sum(v**2, -1)).sum() / wt.sum()
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def _tiny():
    rng = np.random.default_rng(2)
    tables = base.Tables(items=jnp.asarray(rng.standard_normal((10, D)), jnp.float32), prompts=jnp.zeros((1, D)))
    batch = base.PairBatch(
        user=jnp.array([0, 1, 1, 4], jnp.int32), prompt=jnp.full((4,), -1, jnp.int32),
        a=jnp.array([0, 2, 4, 6], jnp.int32), b=jnp.array([1, 3, 5, 7], jnp.int32),
        label=jnp.array([1.0, 0.0, 0.7, 1.0]), weight=jnp.array([1.0, 1.0, 2.0, 0.0]),
    )
    return tables, batch


def linear_deviations(n_users=60, n_items=120, per_user=60, dim=12, seed=0):
    """A shared linear reward plus per-user deviations in a 2-d subspace: w_u = w₀ + B g_u."""
    rng = np.random.default_rng(seed)
    items = (rng.standard_normal((n_items, dim)) * np.linspace(0.5, 2.0, dim)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, 2)))[0]
    w_user = rng.standard_normal(dim) * 0.5 + 2.0 * rng.standard_normal((n_users, 2)) @ basis.T
    user = np.repeat(np.arange(n_users), per_user)
    a, b = rng.integers(0, n_items, len(user)), rng.integers(0, n_items, len(user))
    b = np.where(a == b, (b + 1) % n_items, b)
    p = 1 / (1 + np.exp(-np.sum(w_user[user] * (items[a] - items[b]), axis=1)))
    comparisons = Comparisons.from_arrays(user, a, b, (rng.random(len(user)) < p).astype(np.float32))
    return PreferenceDataset(items=items, comparisons=comparisons, prompts=None, meta={"name": "linear_deviations", "n_users": n_users})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """bt_residual (d = 6 < D = 12: a whitened PCA) trained briefly on 50 seen users, then saved."""
    data = linear_deviations()
    seen = np.arange(50)
    rows = np.flatnonzero(np.isin(data.comparisons.user, seen))
    tables = make_tables(data)
    train = to_batch(data.comparisons.take(rows))
    config = BTResidualConfig(hidden=[16], residual_dim=6)
    dims = Dims(dim=data.dim, n_users=data.n_users)
    graphdef, initial = init_params(BTResidual, config, dims, jax.random.PRNGKey(0)[None])
    train_items = np.unique(np.concatenate([data.comparisons.a[rows], data.comparisons.b[rows]]))
    initial, summary = BTResidual.prepare_params(config, data, train_items, initial)
    trainer = Trainer(graphdef, TrainConfig(progress=False, max_epochs=15, patience=15, batch_size=128, learning_rate=0.05,
                                            checkpoint=False), n_train=len(rows))
    state, _ = trainer.fit(trainer.init_state(jax.tree.map(jnp.copy, initial), jax.random.PRNGKey(1)[None]), tables, train, train)
    path = tmp_path_factory.mktemp("bt_residual") / "model"
    save_model(path, model_config=config, dims=dims, params=state.best_params,
               seen_states=compute_seen_states(graphdef, state.best_params, tables, data.n_users), seeds=[0],
               dataset_meta=data.meta, seen_users=seen, inference="bayes", inference_steps=50)
    return dict(data=data, tables=tables, graphdef=graphdef, initial=initial, params=state.best_params, summary=summary,
                seen=seen, path=path)


def test_projection_is_not_trained_and_survives_save_and_load(trained):
    assert trained["summary"]["projection"] == "pca_whitened"
    before = np.asarray(trained["initial"]["residual_projection"]["matrix"][...])
    after = np.asarray(trained["params"]["residual_projection"]["matrix"][...])
    assert not np.allclose(before[0], np.eye(12, 6))  # prepare_params set it...
    np.testing.assert_array_equal(after, before)  # ... and training left it exactly as it was
    # ... while the rest did train
    assert not np.allclose(trained["params"]["residual_weights"][...], trained["initial"]["residual_weights"][...])
    loaded = pluralign.load(trained["path"])
    np.testing.assert_array_equal(np.asarray(loaded.params["residual_projection"]["matrix"][...]), after[0])
    model = nnx.merge(trained["graphdef"], jax.tree.map(lambda x: x[0], trained["params"]))
    pair = base.gather(trained["tables"], to_batch(trained["data"].comparisons.take(np.arange(0, 3000, 50))))
    state = model.user_table_state(jnp.asarray(trained["data"].comparisons.user[np.arange(0, 3000, 50)]))
    np.testing.assert_array_equal(base.logits(loaded.model, state, pair), base.logits(model, state, pair))
    reward = loaded.reward(capacity=4)
    e_y = np.asarray(pair.e_a[:4])
    user_state = jnp.broadcast_to(model.user_table_state(jnp.array([3])), (4, 6))
    expected = model.reward(user_state, jnp.zeros((4, 12)), jnp.zeros((4,), bool), jnp.asarray(e_y))
    np.testing.assert_allclose(reward.scores(None, e_y, 3), expected, rtol=1e-5, atol=1e-5)


def test_fewshot_recovers_a_planted_deviation(trained):
    """Unseen users (rows 50-59): 30 shots under the empirical-Bayes prior fitted to the seen
    users' v_u predict their other 30 comparisons better than the population (v = 0)."""
    data, model = trained["data"], nnx.merge(trained["graphdef"], jax.tree.map(lambda x: x[0], trained["params"]))
    users = np.arange(50, 60)
    c = data.comparisons
    support_rows = np.stack([np.flatnonzero(c.user == u)[:30] for u in users])  # [U, 30]
    query_rows = np.stack([np.flatnonzero(c.user == u)[30:] for u in users])
    feats = lambda r: model.pair_features(base.gather(trained["tables"], to_batch(c.take(r.reshape(-1)))))  # noqa: E731
    reshape = lambda f, r: jax.tree.map(lambda x: x.reshape(*r.shape, *x.shape[1:]), f)  # noqa: E731
    support, query = reshape(feats(support_rows), support_rows), reshape(feats(query_rows), query_rows)
    labels = jnp.asarray(c.label[support_rows])

    @jax.jit  # one program instead of thousands of eager dispatches (the library jits it the same way)
    def personal_logits(support, labels, seen, query):
        states, covs = base.infer_user_posterior(model, support, labels, jnp.ones_like(labels), inference="bayes",
                                                 seen_users=seen, strength=1.0, steps=50, learning_rate=0.1)
        return base.posterior_logits(model, states, covs, query)

    personal = np.asarray(personal_logits(support, labels, jnp.asarray(trained["seen"]), query))
    population = np.asarray(query[0])  # v = 0: BT's Δr
    y = c.label[query_rows] > 0.5
    acc_personal, acc_population = np.mean((personal > 0) == y), np.mean((population > 0) == y)
    assert acc_personal >= acc_population + 0.05, (acc_personal, acc_population)


def test_lore_residual_dim_zero_is_unchanged_and_positive_adds_the_term():
    dims = Dims(dim=D, n_users=N_USERS)
    plain = LoRe(LoReConfig(hidden=[16], rank=3, residual_dim=0), dims, rngs=nnx.Rngs(0))
    assert "residual_projection" not in nnx.state(plain) and plain.user_state_dim == 3
    full = LoRe(LoReConfig(hidden=[16], rank=3, residual_dim=4), dims, rngs=nnx.Rngs(0))
    assert full.user_state_dim == 3 + 4
    # the extra parameters are drawn after lore's own: the shared ones are identical
    for name in ("reward_net", "basis_net", "null_prompt"):
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), nnx.state(getattr(plain, name)),
                                         nnx.state(getattr(full, name))))
    np.testing.assert_array_equal(plain.user_weights[...], full.user_weights[...])
    pair = make_pair(3)
    w = jnp.asarray(np.random.default_rng(4).standard_normal((6, 3)), jnp.float32)
    v = jnp.asarray(np.random.default_rng(5).standard_normal((6, 4)), jnp.float32)
    np.testing.assert_array_equal(base.logits(full, jnp.concatenate([w, 0 * v], -1), pair), base.logits(plain, w, pair))
    P_t = np.asarray(full.residual_projection.matrix[...])
    extra = np.sum(np.asarray(v) * (np.asarray(pair.e_a - pair.e_b) @ P_t), -1) / 2.0
    np.testing.assert_allclose(base.logits(full, jnp.concatenate([w, v], -1), pair) - base.logits(plain, w, pair), extra,
                               rtol=1e-4, atol=1e-5)
    wv = jnp.concatenate([w, v], -1)
    r = full.rewards(wv[:2], pair.e_x[:2], pair.has_prompt[:2], jnp.stack([pair.e_a[:2], pair.e_b[:2]], axis=1))
    np.testing.assert_allclose(r[:, 0] - r[:, 1], base.logits(full, wv, pair)[:2], rtol=1e-5, atol=1e-5)
    tables, batch = _tiny()
    assert "residual_penalty" not in plain.loss(tables, batch, None)[1]
    assert "residual_penalty" in full.loss(tables, batch, None)[1]
    assert LoRe.prepare_params(LoReConfig(residual_dim=0), None, None, "untouched") == ("untouched", None)


@pytest.mark.slow
def test_population_stage_is_bts_own_fit_frozen(tmp_path):
    """With the population stage (the default), a population-anchored model's shared reward is
    exactly what `model=bt` with the same seeds learns, and the second stage leaves it untouched:
    its 0-answer predictions are BT's."""
    import pluralign
    from pluralign.data.low_rank import SharedPlusLowRankConfig
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    common = dict(data=SharedPlusLowRankConfig(n_users=60, n_items=60, comparisons_per_user=20, dim=8, seed=0),
                  train=TrainConfig(progress=False, max_epochs=4, batch_size=64, checkpoint=False),
                  eval=EvalConfig(shots=[1], modes=["random"], draws=1), seeds=[0, 1], cache_dir=str(tmp_path / "cache"))
    bt = run(RunConfig(model=BTConfig(hidden=[8]), **common), tmp_path / "bt")
    residual = run(RunConfig(model=BTResidualConfig(hidden=[8], residual_dim=4), **common), tmp_path / "residual")
    stage = residual["train"]["population_stage"]
    assert stage["best_epoch"] == bt["train"]["best_epoch"] and stage["model"]["hidden"] == [8]
    bt_params = pluralign.load(tmp_path / "bt").all_params
    res_params = pluralign.load(tmp_path / "residual").all_params
    for name in ("reward_net", "null_prompt"):
        for a, b in zip(jax.tree.leaves(bt_params[name]), jax.tree.leaves(res_params[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... and the user terms did train
    assert float(np.abs(np.asarray(res_params["residual_weights"][...])).max()) > 0.02
