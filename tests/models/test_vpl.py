"""VPL: shapes, the KL and β schedule, context sampling, amortised inference, rewards,
the population anchor (z = 0 is BT exactly; `anchor=False` is the paper's decoder), save → load,
and what it learns (a short fit personalizes; end to end it beats BT on hidden types and reduces
to BT with one type and β = 0). About 30 s on 2 CPU cores."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pluralign.checkpoint_io import restore_pytree, save_pytree
from pluralign.data.hidden_types import HiddenTypesConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.evaluate.fewshot import make_adapt_and_predict
from pluralign.models import BT, BTConfig, base
from pluralign.models.vpl import VPL, VPLConfig, beta_at, kl_to_standard_normal, rescaled_prior
from pluralign.numerics import optimizer_update
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

D, L = 8, 3


def _model(**overrides) -> VPL:
    return VPL(VPLConfig(latent_dim=L, pair_dim=8, encoder_hidden=[16], decoder_hidden=[16], population_hidden=[16],
                         **overrides), base.Dims(dim=D, n_users=5), rngs=nnx.Rngs(0))


def _pairs(rng, n, prompts: bool = False) -> base.PairEmbeddings:
    return base.PairEmbeddings(
        e_x=jnp.asarray(rng.normal(size=(n, D)) if prompts else np.zeros((n, D)), jnp.float32),
        has_prompt=jnp.asarray(np.arange(n) % 2 == 0 if prompts else np.zeros(n, bool)),
        e_a=jnp.asarray(rng.normal(size=(n, D)), jnp.float32), e_b=jnp.asarray(rng.normal(size=(n, D)), jnp.float32),
    )


def _training_set(counts) -> base.PairBatch:
    """Users with the given numbers of comparisons, rows interleaved across users."""
    user = np.concatenate([np.full(c, u) for u, c in enumerate(counts)])
    user = user[np.random.default_rng(0).permutation(len(user))]
    n = len(user)
    return base.PairBatch(
        user=jnp.asarray(user, jnp.int32), prompt=jnp.full((n,), -1, jnp.int32),
        a=jnp.arange(n, dtype=jnp.int32) % 7, b=(jnp.arange(n, dtype=jnp.int32) + 1) % 7,
        label=jnp.ones((n,), jnp.float32), weight=jnp.ones((n,), jnp.float32),
    )


def test_shapes_and_state_layout():
    model, rng = _model(), np.random.default_rng(0)
    support, pair = _pairs(rng, 6 * 4), _pairs(rng, 6)

    @nnx.jit
    def shapes(model, support, pair):
        feats = jax.tree.map(lambda f: f.reshape(6, 4, -1), model.pair_features(support))
        states = model.infer_user(feats, jnp.ones((6, 4)), jnp.ones((6, 4)))
        return (states, model.posterior_variance(states), base.logits(model, states, pair),
                model.predictive_entropy(states, model.pair_features(pair), jax.random.PRNGKey(0), n_samples=5),
                base.reward(model, states, pair.e_x, pair.has_prompt, pair.e_a))

    states, variance, logits, entropy, reward = shapes(model, support, pair)
    assert states.shape == (6, 2 * L) == (6, model.user_state_dim)
    assert variance.shape == (6, L)
    assert logits.shape == entropy.shape == reward.shape == (6,)
    assert ((entropy >= 0) & (entropy <= np.log(2) + 1e-6)).all()


def test_kl_is_zero_at_the_prior_and_known_elsewhere():
    assert float(kl_to_standard_normal(jnp.zeros(L), jnp.zeros(L))) == 0.0
    np.testing.assert_allclose(kl_to_standard_normal(jnp.ones(L), jnp.zeros(L)), 0.5 * L, rtol=1e-6)
    logvar = jnp.full(L, np.log(2.0))  # σ² = 2: ½(2 − 1 − log 2) per dim
    np.testing.assert_allclose(kl_to_standard_normal(jnp.zeros(L), logvar), 0.5 * L * (1 - np.log(2)), rtol=1e-6)
    # An empty context (no support pairs) is the prior itself, so its KL is exactly 0.
    model = _model()
    pairs = _pairs(np.random.default_rng(1), 6)
    mu, logvar = nnx.jit(lambda m, p: m.posterior(
        jax.tree.map(lambda f: f.reshape(2, 3, -1), m.pair_features(p)), jnp.ones((2, 3)), jnp.zeros((2, 3))))(model, pairs)
    assert float(jnp.abs(kl_to_standard_normal(mu, logvar)).max()) == 0.0


def test_beta_schedules():
    linear = VPLConfig(beta=0.5, beta_schedule="linear", beta_warmup_steps=100)
    assert [float(beta_at(linear, s)) for s in (0, 50, 100, 1000)] == [0.0, 0.25, 0.5, 0.5]
    cyclical = dataclasses.replace(linear, beta_schedule="cyclical")
    assert [float(beta_at(cyclical, s)) for s in (0, 25, 50, 75, 100, 125)] == [0.0, 0.25, 0.5, 0.5, 0.0, 0.25]
    assert float(beta_at(dataclasses.replace(linear, beta_schedule="constant"), 0)) == 0.5
    assert float(beta_at(linear, None)) == 0.5  # outside training: the final β
    with pytest.raises(ValueError, match="beta_schedule"):
        VPLConfig(beta_schedule="cosine")


def test_loss_is_the_nll_plus_beta_kl():
    train = _training_set([5, 4, 6])
    tables = base.Tables(items=jnp.asarray(np.random.default_rng(0).normal(size=(7, D)), jnp.float32), prompts=jnp.zeros((1, D)))
    model = _model(beta=0.3, beta_schedule="constant")
    step = base.TrainStep(rng=jax.random.PRNGKey(0), step=jnp.int32(10), rows=jnp.arange(15, dtype=jnp.int32),
                          context=model.training_context(train, 3, seed=0))
    objective, metrics = nnx.jit(lambda m, t, b, s: m.training_loss(t, b, s))(model, tables, train, step)
    np.testing.assert_allclose(objective, metrics["loss"] + 0.3 * metrics["kl"], rtol=1e-6)  # "loss": the NLL (BCE)
    assert float(metrics["kl"]) > 0  # the encoder's posterior is not the prior at init
    # population_weight adds BT's own loss of the shared reward r_θ on the same comparisons.
    weighted = _model(beta=0.3, beta_schedule="constant", population_weight=0.5)
    objective, metrics = nnx.jit(lambda m, t, b, s: m.training_loss(t, b, s))(weighted, tables, train, step)
    bt_loss = base.weighted_metrics(base.logits(_bt_of(weighted), jnp.zeros((15, 0)), base.gather(tables, train)),
                                    train.label, train.weight)["loss"]
    np.testing.assert_allclose(metrics["population_loss"], bt_loss, rtol=1e-6)
    np.testing.assert_allclose(objective, metrics["loss"] + 0.3 * metrics["kl"] + 0.5 * bt_loss, rtol=1e-6)
    with pytest.raises(ValueError, match="population_weight"):
        VPLConfig(anchor=False, population_weight=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("c_min,c_max", [(1, 4), (3, 3), (0, 8)])
def test_the_context_is_the_users_other_comparisons_never_the_query(c_min, c_max):
    counts = [1, 2, 5, 12, 80]  # 80 > context_pool: drawn from a window
    train = _training_set(counts)
    context = base.user_context(train, len(counts), seed=0)
    train_rows = jnp.arange(len(train.label), dtype=jnp.int32)
    model = _model(c_min=c_min, c_max=c_max, context_pool=16)
    sample = jax.jit(model.sample_context)
    for seed in range(5):
        rows, mask = map(np.asarray, sample(context, train, train_rows, jax.random.PRNGKey(seed)))
        own = np.asarray(context.position)[np.asarray(train_rows)]
        n_other = np.asarray(counts)[np.asarray(train.user)] - 1
        sizes = mask.sum(axis=1)
        assert (sizes <= np.minimum(c_max, n_other)).all() and (sizes >= np.minimum(c_min, n_other)).all()
        for i in range(len(own)):
            chosen = rows[i][mask[i]]
            assert own[i] not in chosen  # never its own query
            assert (np.asarray(context.pairs.user)[chosen] == np.asarray(train.user)[i]).all()  # same user
            assert len(set(chosen.tolist())) == len(chosen)  # without replacement
    assert (sizes[np.asarray(train.user) == 0] == 0).all()  # one comparison -> empty context -> prior


def test_amortised_inference_ignores_padding_and_scaled_reward_keeps_the_order():
    model, rng = _model(), np.random.default_rng(2)
    support, pair = _pairs(rng, 6), _pairs(rng, 10)
    labels = jnp.asarray([[1, 0, 1, 1, 0, 1]], jnp.float32)

    @nnx.jit
    def compute(model, support, pair):
        feats = jax.tree.map(lambda f: f.reshape(1, 6, -1), model.pair_features(support))
        padded = model.infer_user(feats, labels, jnp.asarray([[1, 1, 1, 0, 0, 0]], jnp.float32))
        cut = model.infer_user(jax.tree.map(lambda f: f[:, :3], feats), labels[:, :3], jnp.ones((1, 3)))
        state = jnp.broadcast_to(padded, (10, 2 * L))
        raw = model.reward(state, pair.e_x, pair.has_prompt, pair.e_a)
        scaled = model.reward(state, pair.e_x, pair.has_prompt, pair.e_a, reference_y=pair.e_b)
        return padded, cut, raw, scaled

    padded, cut, raw, scaled = compute(model, support, pair)
    np.testing.assert_allclose(padded, cut, rtol=1e-5, atol=1e-6)
    assert ((scaled > 0) & (scaled < 1)).all()
    np.testing.assert_array_equal(np.argsort(raw), np.argsort(scaled))  # σ(r_y − r_ref) is monotone in r_y


def test_the_prior_scale_moves_the_encoders_posterior_as_a_gaussian_prior_would():
    """`rescaled_prior`: q(z | C) = N(μ, σ²) read as N(0, 1) × a likelihood of precision 1/σ² − 1,
    under the prior N(0, 1/c). c = 1 is q itself, a large c the population (z = 0), c < 1 moves z
    further; a dimension the answers do not inform (σ² ≥ 1) stays finite."""
    mu = jnp.asarray([[0.8, -0.5, 0.3], [0.2, 0.1, -1.0]])
    logvar = jnp.log(jnp.asarray([[0.25, 0.5, 1.0], [0.1, 2.0, 0.9]]))
    same = rescaled_prior(mu, logvar, 1.0)
    np.testing.assert_allclose(same[0], mu, rtol=1e-6)
    np.testing.assert_allclose(same[1], logvar, rtol=1e-6, atol=1e-7)
    # σ² = 0.25: likelihood precision 3, mean 0.8·4/3; under c = 5: precision 8, mean 0.8·4/8
    strong = rescaled_prior(mu, logvar, 5.0)
    np.testing.assert_allclose(strong[0][0, 0], 0.8 * 4 / 8, rtol=1e-6)
    np.testing.assert_allclose(strong[1][0, 0], -np.log(8.0), rtol=1e-6)
    assert (jnp.abs(strong[0]) < jnp.abs(mu)).all()
    np.testing.assert_allclose(rescaled_prior(mu, logvar, 1e6)[0], 0.0, atol=1e-5)
    weak = rescaled_prior(mu, logvar, jnp.asarray([0.5, 0.01]))  # one setting per user
    np.testing.assert_allclose(weak[0][0, 0], 0.8 * 4 / 3.5, rtol=1e-6)
    assert (jnp.abs(weak[0]) >= jnp.abs(mu) - 1e-7).all() and jnp.isfinite(weak[0]).all()
    np.testing.assert_allclose(weak[0][1, 1], 0.1 / 0.01, rtol=1e-5)  # σ² = 2: precision c/σ², μ/c


def test_few_shot_inference_reads_the_prior_scale():
    """The evaluation's inference passes its setting to the encoder's posterior: the grid scored
    for VPL is the multipliers' (not a placeholder), and a k-shot prediction moves with the setting."""
    from pluralign.evaluate import shrinkage

    model, rng = _model(), np.random.default_rng(3)
    assert model.uses_prior_strength and not model.fits_user_state
    assert shrinkage.grid(model, "bayes", [0.1, 1.0, 10.0], [0.5]) == [0.1, 1.0, 10.0]
    support = _pairs(rng, 6)
    feats = jax.tree.map(lambda f: f.reshape(1, 6, -1), model.pair_features(support))
    labels, weights = jnp.asarray([[1, 0, 1, 1, 0, 1]], jnp.float32), jnp.ones((1, 6))
    states = {c: base.infer_user_posterior(model, feats, labels, weights, inference="bayes", seen_users=jnp.arange(3),
                                           strength=c, steps=1, learning_rate=0.1)[0] for c in (1.0, 100.0)}
    np.testing.assert_allclose(states[1.0], model.infer_user(feats, labels, weights), rtol=1e-6)
    assert jnp.abs(states[100.0][:, :L]).max() < 0.1 * jnp.abs(states[1.0][:, :L]).max()


# --- the population anchor -------------------------------------------------------------


def _bt_of(model: VPL) -> BT:
    """A BT model holding the anchored VPL's shared-reward parameters."""
    bt = BT(BTConfig(hidden=[16]), base.Dims(dim=D, n_users=5), rngs=nnx.Rngs(1))
    nnx.update(bt, nnx.state(model.population))
    return bt


def test_anchored_population_is_bt_exactly():
    model, rng = _model(), np.random.default_rng(4)
    # Train-like values everywhere, so that the personal part is not trivially 0 at init.
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(7), p.shape, p.dtype), params)
    model = nnx.merge(graphdef, params)
    bt, pair, support = _bt_of(model), _pairs(rng, 6, prompts=True), _pairs(rng, 6 * 4, prompts=True)
    e_items = jnp.asarray(rng.normal(size=(6, 5, D)), jnp.float32)

    @nnx.jit
    def compute(model, bt, pair, support):
        feats = jax.tree.map(lambda f: f.reshape(6, 4, -1), model.pair_features(support))
        empty = model.infer_user(feats, jnp.ones((6, 4)), jnp.zeros((6, 4)))  # 0 shots: no context
        zero = jnp.broadcast_to(model.population_user_state(), (6, 2 * L))
        features = model.pair_features(pair)
        bt_features, no_state = bt.pair_features(pair), jnp.zeros((6, 0))
        return dict(
            empty=empty,
            vpl=(base.logits(model, zero, pair), model.latent_logits(jnp.zeros((3, 6, L)), features),
                 model.reward(zero, pair.e_x, pair.has_prompt, pair.e_a),
                 model.rewards(zero, pair.e_x, pair.has_prompt, e_items)),
            bt=(features["population"], bt.pair_logits(no_state, bt_features),
                bt.reward(no_state, pair.e_x, pair.has_prompt, pair.e_a), bt.rewards(no_state, pair.e_x, pair.has_prompt, e_items)),
            moved=base.logits(model, jnp.ones((6, 2 * L)), pair),
        )

    out = compute(model, bt, pair, support)
    np.testing.assert_array_equal(out["empty"], 0.0)  # an empty context is the prior: z = 0
    logits, sampled, reward, rewards = out["vpl"]
    shared, bt_logits, bt_reward, bt_rewards = out["bt"]
    np.testing.assert_array_equal(logits, shared)  # z = 0: the model's BT part, bit for bit
    np.testing.assert_array_equal(logits, bt_logits)  # ... which is BT's own computation
    np.testing.assert_array_equal(sampled, jnp.broadcast_to(bt_logits, (3, 6)))  # latent_logits with sample axes
    np.testing.assert_array_equal(reward, bt_reward)
    np.testing.assert_array_equal(rewards, bt_rewards)
    assert float(jnp.abs(out["moved"] - bt_logits).min()) > 1e-4  # z ≠ 0 moves every pair


@pytest.mark.xla_optimized  # bit for bit against an op-by-op computation: equal as the library compiles, not at -O0
def test_anchored_zero_shot_evaluation_is_bt():
    """The evaluation's 0-shot prediction (make_adapt_and_predict, n_shots = 0) is BT's."""
    model = _model(normalize_z=True)  # n(0) = 0 also under the normalisation
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(5)
    tables = base.Tables(items=jnp.asarray(rng.normal(size=(20, D)), jnp.float32), prompts=jnp.zeros((1, D)))

    def batch(u, k):
        return base.PairBatch(
            user=jnp.zeros((u, k), jnp.int32), prompt=jnp.full((u, k), -1, jnp.int32),
            a=jnp.asarray(rng.integers(0, 20, (u, k)), jnp.int32), b=jnp.asarray(rng.integers(0, 20, (u, k)), jnp.int32),
            label=jnp.ones((u, k), jnp.float32), weight=jnp.ones((u, k), jnp.float32))

    pool, query = batch(3, 4), batch(3, 5)
    adapt = make_adapt_and_predict(graphdef, steps=5, learning_rate=0.1)
    seen = jnp.arange(5, dtype=jnp.int32)
    states, zero_shot = adapt(params, tables, pool, 0, query, 1.0, seen)
    _, two_shot = adapt(params, tables, pool, 2, query, 1.0, seen)
    flat = jax.tree.map(lambda x: x.reshape(-1), query)
    bt = _bt_of(model)
    expected = base.logits(bt, jnp.zeros((15, 0)), base.gather(tables, flat)).reshape(3, 5)
    np.testing.assert_array_equal(states, 0.0)
    np.testing.assert_array_equal(zero_shot, expected)
    assert not np.array_equal(two_shot, expected)


def test_paper_decoder_is_unchanged_without_the_anchor():
    """anchor=False: the same parameters as the anchored model minus r_θ (drawn identically), and the
    reward is the decoder alone, r = MLP_dec([ẽ_x; e_y; z])."""
    paper, anchored, rng = _model(anchor=False), _model(), np.random.default_rng(6)
    paper_state = list(nnx.to_flat_state(nnx.state(paper)))
    anchored_state = {k: v for k, v in nnx.to_flat_state(nnx.state(anchored)) if k[0] != "population"}
    assert [k for k, _ in paper_state] == list(anchored_state) and "population" not in nnx.state(paper)
    for key, value in paper_state:
        np.testing.assert_array_equal(value[...], anchored_state[key][...])
    pair, state = _pairs(rng, 6, prompts=True), jnp.asarray(rng.normal(size=(6, 2 * L)), jnp.float32)

    def decoder(e_y):
        e_x = paper.null_prompt(pair.e_x, pair.has_prompt)
        return paper.decoder(jnp.concatenate([e_x, e_y, state[:, :L]], axis=-1))[:, 0]

    np.testing.assert_allclose(base.logits(paper, state, pair), decoder(pair.e_a) - decoder(pair.e_b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(paper.reward(state, pair.e_x, pair.has_prompt, pair.e_a), decoder(pair.e_a), rtol=1e-5, atol=1e-5)


def _two_type_data(rng, n_users, n_pairs, items):
    """Users of two types: reward y·(a ± b), the shared direction a and the contested one b."""
    a, b = np.eye(D)[0] * 2.0, np.eye(D)[1] * 3.0
    sign = np.where(np.arange(n_users) % 2 == 0, 1.0, -1.0)
    user = np.repeat(np.arange(n_users), n_pairs)
    i, j = rng.integers(0, len(items), (2, len(user)))
    margin = (items[i] - items[j]) @ a + sign[user] * ((items[i] - items[j]) @ b)
    label = (rng.random(len(user)) < 1 / (1 + np.exp(-margin))).astype(np.float32)
    return base.PairBatch(user=jnp.asarray(user, jnp.int32), prompt=jnp.full((len(user),), -1, jnp.int32),
                          a=jnp.asarray(i, jnp.int32), b=jnp.asarray(j, jnp.int32),
                          label=jnp.asarray(label), weight=jnp.ones((len(user),), jnp.float32))


def test_anchored_short_training_personalizes():
    """80 full-batch steps on two user types: the few-shot posterior mean beats the
    population decode (z = 0, BT's part) on held-out users' query pairs."""
    rng, n_users, n_items = np.random.default_rng(0), 40, 60
    items = rng.normal(size=(n_items, D)).astype(np.float32)
    tables = base.Tables(items=jnp.asarray(items), prompts=jnp.zeros((1, D)))
    train = _two_type_data(rng, n_users, 16, items)
    config = VPLConfig(latent_dim=2, pair_dim=16, encoder_hidden=[32], decoder_hidden=[32], population_hidden=[32],
                       beta=0.01, beta_schedule="constant", c_min=2, c_max=8)
    model = VPL(config, base.Dims(dim=D, n_users=n_users), rngs=nnx.Rngs(0))
    context = model.training_context(train, n_users, seed=0)
    rows = jnp.arange(train.label.shape[0], dtype=jnp.int32)
    tx = optax.adam(0.01)
    graphdef, params = nnx.split(model)

    @jax.jit
    def train_step(params, opt_state, step):
        def objective(params):
            step_info = base.TrainStep(rng=jax.random.fold_in(jax.random.PRNGKey(1), step), step=step, rows=rows, context=context)
            return nnx.merge(graphdef, params).training_loss(tables, train, step_info)[0]

        grads = jax.grad(objective)(params)
        updates, opt_state = optimizer_update(tx, grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for step in range(80):
        params, opt_state = train_step(params, opt_state, jnp.int32(step))
    model = nnx.merge(graphdef, params)

    test = _two_type_data(np.random.default_rng(1), 20, 28, items)  # 8 support + 20 query pairs per user
    feats = jax.tree.map(lambda f: f.reshape(20, 28, *f.shape[1:]), model.pair_features(base.gather(tables, test)))
    labels = test.label.reshape(20, 28)
    support, query = jax.tree.map(lambda f: f[:, :8], feats), jax.tree.map(lambda f: f[:, 8:], feats)
    states = jax.jit(lambda f, y: model.infer_user(f, y, jnp.ones((20, 8))))(support, labels[:, :8])  # [20, 2L]

    @jax.jit
    def correct(states):  # one program, not eager ops
        logits = jax.vmap(lambda s, f: model.pair_logits(jnp.broadcast_to(s, (20, s.shape[0])), f))(states, query)
        return ((logits > 0) == (labels[:, 8:] > 0.5)).mean()

    accuracy = lambda states: float(correct(states))  # noqa: E731

    population = accuracy(jnp.zeros_like(states))
    np.testing.assert_array_equal(jax.vmap(lambda f: model.pair_logits(jnp.zeros((20, 2 * 2)), f))(query),
                                  query["population"])  # z = 0 decodes BT's part
    assert population > 0.55  # the shared direction is learned by r_θ
    assert accuracy(states) > population + 0.1  # and the latent personalizes


@pytest.mark.slow
def test_save_load_gives_the_same_predictions(tmp_path):
    model, rng = _model(normalize_z=True), np.random.default_rng(3)
    pair = _pairs(rng, 5)
    state = jnp.asarray(rng.normal(size=(5, 2 * L)), jnp.float32)
    before = base.logits(model, state, pair)
    graphdef, params = nnx.split(model)
    save_pytree(tmp_path / "vpl", params)
    restored = restore_pytree(tmp_path / "vpl", params)
    np.testing.assert_array_equal(before, base.logits(nnx.merge(graphdef, restored), state, pair))


# --- end to end, through pluralign.run -------------------------------------------------

TRAIN = TrainConfig(progress=False, max_epochs=12, batch_size=128, learning_rate=0.01, patience=12, checkpoint=False)


@pytest.mark.slow
def test_vpl_learns_planted_types_and_beats_bt_on_unseen_users(vpl_two_types, tmp_path):
    config, vpl = vpl_two_types["config"], vpl_two_types["results"]  # tests/conftest.py
    bt = run(dataclasses.replace(config, model=BTConfig(), train=TRAIN), tmp_path / "bt")
    unseen = vpl["unseen"]["accuracy_at_k"]
    # BT answers every user with one reward: at best the population-optimal accuracy.
    assert bt["unseen"]["accuracy_at_k"][8] < vpl["population_optimal_accuracy"] + 0.03
    # 8 context pairs identify a user's type: VPL beats BT clearly and gets near the ceiling.
    assert unseen[8] > bt["unseen"]["accuracy_at_k"][8] + 0.1
    assert unseen[8] > vpl["bayes_optimal_accuracy"] - 0.06
    assert unseen[8] > unseen[1]
    assert vpl["seen"]["accuracy"] > bt["seen"]["accuracy"] + 0.1


@pytest.mark.slow
def test_one_type_and_beta_zero_matches_bt(tmp_path):
    data = HiddenTypesConfig(n_types=1, n_users=80, n_items=300, comparisons_per_user=40, dim=16, seed=2)
    evaluation = EvalConfig(shots=[8], modes=["random"], draws=1, prior_strengths=[1.0], pair_test_fraction=0.2)
    results = {
        name: run(RunConfig(model=model, data=data, train=TRAIN, eval=evaluation, cache_dir=str(tmp_path / "cache")),
                  tmp_path / name)
        for name, model in (("vpl", VPLConfig(beta=0.0)), ("bt", BTConfig()))
    }
    vpl, bt = results["vpl"], results["bt"]
    assert abs(vpl["seen"]["accuracy"] - bt["seen"]["accuracy"]) < 0.03
    assert abs(vpl["unseen"]["accuracy_at_k"][8] - bt["unseen"]["accuracy_at_k"][8]) < 0.03
    assert bt["seen"]["accuracy"] > bt["bayes_optimal_accuracy"] - 0.05  # and both learned the one reward
