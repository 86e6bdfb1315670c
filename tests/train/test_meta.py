"""MRM training option (pluralign.train.meta): RPO weights, support sets, the inner loop, and a
full run whose artifact loads back with its meta-learned initial state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pluralign
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import BT, BTConfig, Dims, PairEmbeddings, base
from pluralign.models.lore import LoRe, LoReConfig
from pluralign.run import RunConfig, run
from pluralign.train.batches import make_tables, to_batch
from pluralign.train import meta
from pluralign.train.trainer import TrainConfig

D, RANK = 8, 2


def test_robust_weights_up_weight_the_hardest_users():
    loss = jnp.array([0.1, 0.5, 0.9, 7.0])
    present = jnp.array([True, True, True, False])
    w = np.asarray(meta.robust_weights(loss, present, ratio=1 / 3, smoothing=0.1))
    q = np.quantile([0.1, 0.5, 0.9], 2 / 3)  # the absent user does not move the quantile
    np.testing.assert_allclose(w[:3], 1 + 1 / (1 + np.exp(-(np.array([0.1, 0.5, 0.9]) - q) / 0.1)), rtol=1e-5)
    assert w[2] > 1.9 and w[0] < 1.01
    np.testing.assert_array_equal(meta.robust_weights(loss, present, ratio=0.0, smoothing=0.1), np.ones(4))


def test_support_sets_are_the_same_users_other_training_pairs(tiny_dataset):
    c = tiny_dataset.comparisons
    train = to_batch(c)
    context = base.user_context(train, tiny_dataset.n_users, seed=0)
    batch, batch_rows = jax.tree.map(lambda col: col[:50], train), jnp.arange(50, dtype=jnp.int32)
    rows, mask = meta.support_rows(context, batch, batch_rows, size=16, rng=jax.random.PRNGKey(0))
    ctx = context.pairs
    assert rows.shape == (50, 16) and bool(mask.all())
    np.testing.assert_array_equal(np.asarray(ctx.user)[np.asarray(rows)], np.broadcast_to(np.asarray(batch.user)[:, None], (50, 16)))
    own = np.asarray(context.position)[np.asarray(batch_rows)]
    assert not np.any(np.asarray(rows) == own[:, None])


def test_inner_loop_is_gradient_descent_from_the_meta_init():
    cls = meta.meta_class(LoRe, meta.MetaOptions(inner_steps=1, inner_learning_rate=0.7))
    model = cls(LoReConfig(hidden=[8], rank=RANK, residual_dim=0), Dims(dim=D, n_users=4), rngs=nnx.Rngs(0))
    model.meta_init[...] = jnp.array([0.3, -0.2])
    rng = np.random.default_rng(0)
    pair = PairEmbeddings(e_x=jnp.zeros((5, D)), has_prompt=jnp.zeros(5, bool),
                          e_a=jnp.asarray(rng.standard_normal((5, D)), jnp.float32), e_b=jnp.asarray(rng.standard_normal((5, D)), jnp.float32))
    feats = model.pair_features(pair)
    y, w = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0]), jnp.array([1.0, 1.0, 1.0, 0.5, 0.0])
    phi = np.asarray(model.adapt(feats, y, w))
    shared, diff = (np.asarray(f, np.float64) for f in feats)
    p = 1 / (1 + np.exp(-(shared + diff @ np.array([0.3, -0.2]))))
    grad = diff.T @ (np.asarray(w) * (p - np.asarray(y))) / np.asarray(w).sum()  # d/dφ of the mean BCE (linear head)
    np.testing.assert_allclose(phi, np.array([0.3, -0.2]) - 0.7 * grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(model.population_user_state(), np.array([0.3, -0.2], np.float32))


def test_meta_needs_a_fitted_user_state():
    with pytest.raises(ValueError, match="train.meta needs a model whose user state is fitted"):
        meta.meta_class(BT, meta.MetaOptions())(BTConfig(), Dims(dim=D, n_users=3), rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_meta_run_trains_saves_and_loads(tmp_path):
    config = RunConfig(
        model=LoReConfig(rank=RANK, hidden=[16]),
        data=IdealPointConfig(n_users=40, n_items=100, comparisons_per_user=20, dim=D, seed=0),
        train=TrainConfig(progress=False, max_epochs=3, batch_size=64, checkpoint=False, meta=True, meta_support_size=4),
        eval=EvalConfig(shots=[1, 5], modes=["random"], draws=1, inference_steps=10),
        cache_dir=str(tmp_path / "cache"),
    )
    results = run(config, tmp_path / "run")
    assert np.isfinite(results["seen"]["accuracy"]) and results["unseen"]["accuracy_at_k"]
    loaded = pluralign.load(tmp_path / "run")
    assert isinstance(loaded.model, meta.MetaLearned) and loaded.record["meta"]["support_size"] == 4
    init = np.asarray(loaded.model.meta_init[...])
    assert np.any(init != 0.0)  # trained away from lore's population state w = 0
    np.testing.assert_array_equal(loaded.model.population_user_state(), init)
    dataset = loaded.load_dataset(str(tmp_path / "cache"))
    batch = to_batch(dataset.comparisons.take(np.arange(30)))
    tables = make_tables(dataset)
    expected = base.seen_logits(loaded.model, tables, batch)
    np.testing.assert_allclose(loaded.seen_logits(tables, batch), expected, rtol=1e-6, atol=1e-6)
