"""DPL and DPRM: population models that see hidden context without modelling users.

- exact values of their pair probabilities and losses;
- DPL's reward spread is larger on pairs that two hidden user types disagree on than on
  pairs both agree on (what the DPL paper uses it for);
- DPRM's predicted vote share follows the planted population share;
- both reach BT's accuracy through `run.run`, with unseen-user accuracy flat in k.
About 15 s on 2 CPU cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from pluralign.data.format import Comparisons
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import REGISTRY, BTConfig, DPLConfig, DPRMConfig, base
from pluralign.models.dprm import aggregate_votes, beta_bins, ot_distance
from pluralign.run import RunConfig, run
from pluralign.train.batches import to_batch
from pluralign.train.trainer import Trainer, TrainConfig, init_params
from flax import nnx

D = 8


def _model(name, config, seed=0):
    cls = REGISTRY[name][0]
    return cls(config, base.Dims(dim=D, n_users=5), rngs=nnx.Rngs(seed))


def _pair(n=6, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return base.PairEmbeddings(
        e_x=jnp.zeros((n, D)), has_prompt=jnp.zeros((n,), bool),
        e_a=jax.random.normal(k[0], (n, D)), e_b=jax.random.normal(k[1], (n, D)),
    )


def test_dpl_mean_variance_logit_is_the_probit_of_the_standardised_mean_gap():
    model = _model("dpl_mv", DPLConfig(name="dpl_mv"))
    pair = _pair()
    mu_a, sd_a = model.reward_distribution(pair.e_x, pair.has_prompt, pair.e_a)
    mu_b, sd_b = model.reward_distribution(pair.e_x, pair.has_prompt, pair.e_b)
    want = norm.cdf((mu_a - mu_b) / jnp.sqrt(sd_a**2 + sd_b**2))
    got = jax.nn.sigmoid(model.pair_logits(jnp.zeros((6, 0)), model.pair_features(pair)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Swapping the responses gives 1 − P.
    swapped = pair.replace(e_a=pair.e_b, e_b=pair.e_a)
    np.testing.assert_allclose(model.pair_features(swapped), -model.pair_features(pair), atol=1e-5)


def test_dpl_categorical_probability_counts_wins_and_half_ties():
    model = _model("dpl_cat", DPLConfig(name="dpl_cat", n_atoms=3))
    # Point masses: a on atom 2, b on atom 1 -> P(a ≻ b) = 1; both on atom 1 -> ½.
    big = 30.0
    out_a, out_b, out_c = jnp.array([[0, 0, big]]), jnp.array([[0, big, 0]]), jnp.array([[0, big, 0]])
    assert float(jax.nn.sigmoid(model._logit(out_a, out_b))[0]) > 0.999
    assert float(jax.nn.sigmoid(model._logit(out_b, out_c))[0]) == pytest.approx(0.5, abs=1e-5)
    # Uniform vs uniform over 3 atoms: P = (3 wins + 1.5 ties) / 9 = ½; a spread vs a point in the middle: ½.
    assert float(jax.nn.sigmoid(model._logit(jnp.zeros((1, 3)), jnp.zeros((1, 3))))[0]) == pytest.approx(0.5, abs=1e-6)


def test_ot_distance_known_values():
    c = 10
    point = lambda i: jax.nn.one_hot(jnp.array([i]), c)
    assert float(ot_distance(point(0), point(c - 1))[0]) == pytest.approx((c - 1) / c)
    assert float(ot_distance(point(3), point(5))[0]) == pytest.approx(2 / c)
    p = beta_bins(jnp.array([2.0]), jnp.array([5.0]), c)
    assert float(ot_distance(p, p)[0]) == 0.0
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    # The Beta discretisation keeps its mean (up to binning): Beta(2, 5) has mean 2/7.
    centres = (jnp.arange(c, dtype=jnp.float32) + 0.5) / c
    assert float((p[0] @ centres)) == pytest.approx(2 / 7, abs=0.02)


def test_aggregate_votes_counts_each_pair_in_either_orientation():
    comps = Comparisons.from_arrays(
        user=[0, 1, 2, 3, 0], a=[1, 2, 1, 1, 3], b=[2, 1, 2, 2, 4], label=[1, 1, 0, 1, 1.0]
    )
    agg = aggregate_votes(comps)
    assert len(agg) == 2
    first = np.flatnonzero((agg.a == 1) & (agg.b == 2))[0]
    # Votes for 1 over 2: rows 0, 3 (label 1), row 1 says 2 ≻ 1, row 2 says 2 ≻ 1 -> 2 of 4.
    assert agg.weight[first] == 4 and agg.label[first] == pytest.approx(0.5)


def _train(name, config, comparisons, items, epochs=80, lr=0.02, batch=128, seed=0):
    tables = base.Tables(items=jnp.asarray(items), prompts=jnp.zeros((1, items.shape[1])))
    cls = REGISTRY[name][0]
    graphdef, params = init_params(
        cls, config, base.Dims(dim=items.shape[1], n_users=int(comparisons.user.max()) + 1), jax.random.PRNGKey(seed)[None]
    )
    train = to_batch(comparisons)
    trainer = Trainer(graphdef, TrainConfig(progress=False, checkpoint=False, max_epochs=epochs, patience=epochs,
                                            learning_rate=lr, batch_size=batch), n_train=len(comparisons))
    state, _ = trainer.fit(trainer.init_state(params, jax.random.PRNGKey(seed + 1)[None]), tables, train, train)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[0], state.best_params)), tables


def _two_types(n_items=200, n_votes=4000, seed=0):
    """Items z ∈ R² (+ nuisance); two hidden user types with utilities z·(1, 1) and z·(1, −1),
    half the voters each, noise-free labels. Type disagreement lives in z₂."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_items, 2))
    items = np.concatenate([z, 0.3 * rng.standard_normal((n_items, D - 2))], axis=1).astype(np.float32)
    w = np.array([[1.0, 1.0], [1.0, -1.0]])
    a = rng.integers(n_items, size=n_votes)
    b = (a + rng.integers(1, n_items, size=n_votes)) % n_items
    kind = rng.integers(2, size=n_votes)
    label = ((z[a] - z[b]) @ w.T)[np.arange(n_votes), kind] > 0
    return z, items, Comparisons.from_arrays(user=kind, a=a, b=b, label=label.astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpl_mv", "dpl_cat"])
def test_dpl_spread_is_larger_on_pairs_the_hidden_types_disagree_on(name):
    z, items, comps = _two_types()
    model, _ = _train(name, DPLConfig(name=name), comps, items, epochs=30)
    # Fresh pairs: controversial = the two types order them differently.
    rng = np.random.default_rng(1)
    a, b = rng.integers(len(z), size=2000), rng.integers(len(z), size=2000)
    d = z[a] - z[b]
    controversial = np.sign(d @ [1.0, 1.0]) != np.sign(d @ [1.0, -1.0])
    e = lambda rows: jnp.asarray(items[rows])
    no_prompt = jnp.zeros((2000,), bool)
    _, sd_a = model.reward_distribution(jnp.zeros((2000, D)), no_prompt, e(a))
    _, sd_b = model.reward_distribution(jnp.zeros((2000, D)), no_prompt, e(b))
    spread = np.asarray(sd_a**2 + sd_b**2)
    assert spread[controversial].mean() > 1.3 * spread[~controversial].mean()


@pytest.mark.slow
def test_dprm_predicts_the_planted_population_vote_share():
    """Each of 600 pairs is voted on by 40 people with a planted share s = σ(u_a − u_b);
    the votes are aggregated (DPRM's crowd posterior) and DPRM's predicted mean share is
    compared with s on pairs it never saw."""
    rng = np.random.default_rng(0)
    n_items, n_pairs, n_votes = 150, 900, 40
    z = rng.standard_normal((n_items, 2))
    items = np.concatenate([z, 0.3 * rng.standard_normal((n_items, D - 2))], axis=1).astype(np.float32)
    utility = 1.5 * z @ [1.0, -0.5]
    a = rng.integers(n_items, size=n_pairs)
    b = (a + rng.integers(1, n_items, size=n_pairs)) % n_items
    share = 1.0 / (1.0 + np.exp(-(utility[a] - utility[b])))
    train_pairs = np.arange(600)
    rows = np.repeat(train_pairs, n_votes)
    votes = Comparisons.from_arrays(
        user=np.tile(np.arange(n_votes), len(train_pairs)), a=a[rows], b=b[rows],
        label=(rng.random(len(rows)) < share[rows]).astype(np.float32),
    )
    crowd = aggregate_votes(votes)
    assert len(crowd) == len(np.unique(np.sort(np.stack([a[:600], b[:600]], 1), axis=1), axis=0))
    model, tables = _train("dprm", DPRMConfig(), crowd, items, epochs=150, lr=0.01, batch=64)
    held_out = np.arange(600, n_pairs)
    pair = base.PairEmbeddings(
        e_x=jnp.zeros((len(held_out), D)), has_prompt=jnp.zeros((len(held_out),), bool),
        e_a=jnp.asarray(items[a[held_out]]), e_b=jnp.asarray(items[b[held_out]]),
    )
    alpha, beta = model.share_distribution(pair)
    predicted = np.asarray(alpha / (alpha + beta))
    assert np.mean(np.abs(predicted - share[held_out])) < 0.08
    assert np.corrcoef(predicted, share[held_out])[0, 1] > 0.9
    # 40 votes make a confident posterior: the predicted Beta is much narrower than the flat prior.
    sd = np.sqrt(np.asarray(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))))
    assert np.median(sd) < 0.5 * np.sqrt(1 / 12)


@pytest.fixture(scope="module")
def population_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("population")
    data = IdealPointConfig(n_users=80, n_items=300, comparisons_per_user=100, dim=16, latent_dim=4, n_groups=3, seed=0)
    out = {}
    for config in (BTConfig(), DPLConfig(name="dpl_mv"), DPLConfig(name="dpl_cat"), DPRMConfig()):
        out[config.name] = run(
            RunConfig(
                model=config, data=data,
                train=TrainConfig(progress=False, max_epochs=20, batch_size=128, learning_rate=0.02, patience=5, checkpoint=False),
                eval=EvalConfig(shots=[1, 5], modes=["random"], draws=1, prior_strengths=[1.0], pair_test_fraction=0.2),
                cache_dir=str(root / "cache"),
            ),
            root / config.name,
        )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpl_mv", "dpl_cat", "dprm"])
def test_population_models_reach_bt_accuracy_and_are_flat_in_k(population_runs, name):
    r, bt = population_runs[name], population_runs["bt"]
    # Seen test pairs: ≈ 1,120, so one accuracy has a std of ≈ 0.014 (with 560 pairs, std ≈ 0.02, the
    # 0.04 margin was 1.4 std of a difference: DPRM 0.559 vs BT 0.605 after an unrelated change of batch order).
    assert r["seen"]["accuracy"] >= bt["seen"]["accuracy"] - 0.04
    assert r["seen"]["accuracy"] <= r["population_optimal_accuracy"] + 0.04
    at_k = r["unseen"]["accuracy_at_k"]
    assert at_k[1] == at_k[5]
