"""LoRe-style personal rewards: r_u = r_θ + w_uᵀ B_θ (pluralign.models.lore).

Shapes; w = 0 is BT exactly (same r_θ parameters -> identical logits); the training loss
recomputed in numpy; and, trained end to end, it beats BT where users genuinely differ.
Save -> load -> same predictions is covered for every registered model by tests/export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import BT, BTConfig, Dims, PairBatch, Tables, base
from pluralign.models.lore import LoRe, LoReConfig
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

D, N_USERS, RANK = 8, 5, 3


def make_pair(n=6, seed=0) -> base.PairEmbeddings:
    rng = np.random.default_rng(seed)
    has_prompt = rng.random(n) < 0.5
    return base.PairEmbeddings(
        e_x=jnp.asarray(rng.standard_normal((n, D)) * has_prompt[:, None], jnp.float32), has_prompt=jnp.asarray(has_prompt),
        e_a=jnp.asarray(rng.standard_normal((n, D)), jnp.float32), e_b=jnp.asarray(rng.standard_normal((n, D)), jnp.float32),
    )


def make_lore(**overrides) -> LoRe:
    """The low-rank part alone (residual_dim=0); the full-rank term is tested in test_bt_residual."""
    return LoRe(LoReConfig(**{"hidden": [16], "rank": RANK, "residual_dim": 0, **overrides}), Dims(dim=D, n_users=N_USERS),
                rngs=nnx.Rngs(0))


def test_shapes():
    model = make_lore(basis_hidden=[8])
    pair = make_pair()
    shared, basis_diff = model.pair_features(pair)
    assert shared.shape == (6,) and basis_diff.shape == (6, RANK) and model.user_state_dim == RANK
    assert base.logits(model, jnp.ones((6, RANK)), pair).shape == (6,)
    assert model.user_table_state(jnp.arange(4)).shape == (4, RANK)
    assert model.population_user_state().shape == (RANK,)
    assert model.rewards(jnp.ones((2, RANK)), pair.e_x[:2], pair.has_prompt[:2], jnp.ones((2, 4, D))).shape == (2, 4)


def test_zero_weights_give_bt_exactly():
    """Same r_θ parameters -> the zero-weight user's logits and rewards are BT's, bit for bit."""
    bt = BT(BTConfig(hidden=[16]), Dims(dim=D, n_users=N_USERS), rngs=nnx.Rngs(7))
    model = make_lore()
    nnx.update(model.reward_net, nnx.state(bt.reward_net))
    nnx.update(model.null_prompt, nnx.state(bt.null_prompt))
    pair = make_pair()
    zero = jnp.zeros((6, RANK))
    np.testing.assert_array_equal(base.logits(model, zero, pair), base.logits(bt, jnp.zeros((6, 0)), pair))
    np.testing.assert_array_equal(
        model.reward(zero, pair.e_x, pair.has_prompt, pair.e_a), bt.reward(zero, pair.e_x, pair.has_prompt, pair.e_a)
    )
    assert np.all(np.asarray(model.population_user_state()) == 0.0)
    # ... and a non-zero weight moves the logit by exactly wᵀ(B(a) − B(b)).
    w = jnp.asarray(np.random.default_rng(1).standard_normal((6, RANK)), jnp.float32)
    basis_diff = model.basis(pair.e_x, pair.has_prompt, pair.e_a) - model.basis(pair.e_x, pair.has_prompt, pair.e_b)
    np.testing.assert_allclose(
        base.logits(model, w, pair) - base.logits(bt, jnp.zeros((6, 0)), pair), np.sum(w * basis_diff, -1), rtol=1e-5, atol=1e-5
    )


def test_lore_formulation_has_no_shared_reward():
    model = make_lore(formulation="lore")
    pair = make_pair()
    np.testing.assert_array_equal(base.logits(model, jnp.zeros((6, RANK)), pair), np.zeros(6))
    with pytest.raises(ValueError, match="formulation"):
        LoReConfig(formulation="simplex")


def test_loss_known_value():
    model = make_lore(weight_prior_strength=0.3)
    rng = np.random.default_rng(2)
    items = jnp.asarray(rng.standard_normal((10, D)), jnp.float32)
    tables = Tables(items=items, prompts=jnp.zeros((1, D)))
    batch = PairBatch(
        user=jnp.array([0, 1, 1, 4], jnp.int32), prompt=jnp.full((4,), -1, jnp.int32),
        a=jnp.array([0, 2, 4, 6], jnp.int32), b=jnp.array([1, 3, 5, 7], jnp.int32),
        label=jnp.array([1.0, 0.0, 0.7, 1.0]), weight=jnp.array([1.0, 1.0, 2.0, 0.0]),
    )
    value, metrics = model.loss(tables, batch, None)
    # numpy reference: BT's Δr from its own reward, the basis and the user table read directly
    e = base.gather(tables, batch)
    r = lambda y: np.asarray(model.reward(jnp.zeros((4, RANK)), e.e_x, e.has_prompt, y), np.float64)  # noqa: E731
    basis_diff = np.asarray(model.basis(e.e_x, e.has_prompt, e.e_a) - model.basis(e.e_x, e.has_prompt, e.e_b), np.float64)
    w = np.asarray(model.user_weights[...], np.float64)[np.asarray(batch.user)]
    z = r(e.e_a) - r(e.e_b) + np.sum(w * basis_diff, -1)
    y, wt = np.asarray(batch.label, np.float64), np.asarray(batch.weight, np.float64)
    ce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 / (1 + np.exp(z))))
    penalty = 0.5 * (np.sum(w**2, -1) + np.sum(basis_diff**2, -1))
    expected = (wt * ce).sum() / wt.sum() + 0.3 * (wt * penalty).sum() / wt.sum()
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), (wt * ce).sum() / wt.sum(), rtol=1e-5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """BT and lore trained by run.run on ideal-point data with 3 groups that disagree."""
    root = tmp_path_factory.mktemp("lore_planted")
    data = IdealPointConfig(n_users=120, n_items=300, comparisons_per_user=60, dim=16, latent_dim=3, n_groups=3, seed=0)
    out = {}
    for name, model in {"bt": BTConfig(), "lore": LoReConfig(rank=3)}.items():
        config = RunConfig(
            model=model, data=data,
            train=TrainConfig(progress=False, max_epochs=40, batch_size=128, learning_rate=0.02, patience=8, checkpoint=False),
            eval=EvalConfig(shots=[1, 20], modes=["random"], draws=1, prior_strengths=[1.0], pair_test_fraction=0.2),
            cache_dir=str(root / "cache"),
        )
        out[name] = run(config, root / name)
    return out


@pytest.mark.slow
def test_lore_beats_bt_where_users_differ(planted):
    bt, lore = planted["bt"], planted["lore"]
    gap = bt["bayes_optimal_accuracy"] - bt["population_optimal_accuracy"]
    assert gap >= 0.1
    assert lore["seen"]["accuracy"] >= bt["seen"]["accuracy"] + 0.5 * gap
    bt_curve, curve = bt["unseen"]["by_mode"]["random"], lore["unseen"]["by_mode"]["random"]
    assert curve[20]["accuracy"] >= bt_curve[20]["accuracy"] + 0.3 * gap
    assert curve[20]["accuracy"] > curve[1]["accuracy"]
