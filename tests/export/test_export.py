"""Downstream use (pluralign.export), for every registered model: save -> load gives the same
parameters and seen-user predictions; few-shot inference through PersonalizedReward is the
evaluation protocol's; online updates after k comparisons equal batch inference on those k;
rewards, preference matrices, best-of-n, the policy hook and the user-embedding export."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

import pluralign
from pluralign.data.multi_attribute import MultiAttributeConfig, make_multi_attribute
from pluralign.data.splits import split_seen_pairs, split_users
from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
from pluralign.evaluate import fewshot
from pluralign.export import OnlineUser, Support, UserState, export_user_embeddings, save_model
from pluralign.export.artifact import compute_seen_states
from pluralign.config import model_config
from pluralign.models import REGISTRY, base
from pluralign.train.batches import make_tables, padded_batch, to_batch
from pluralign.train.trainer import predict_seen

SEEDS = [3, 7]
STEPS = 15  # few-shot inference steps recorded in the test artifacts


@functools.cache
def bundle(name: str, root: str):
    """A tiny dataset, a 2-seed model (random θ; training is not what is tested here), its
    artifact, and the pieces the run would have (tables with context, test pairs)."""
    cls, _ = REGISTRY[name]
    config = model_config(name)
    if name == "dpa":  # needs rated attributes
        data = make_multi_attribute(MultiAttributeConfig(n_users=24, n_items=60, comparisons_per_user=16, dim=8, seed=0))
    else:
        data = make_ideal_point(IdealPointConfig(n_users=24, n_items=60, comparisons_per_user=16, dim=8, n_groups=3, seed=0))
    split = split_users(data.n_users, seed=0, unseen_val_fraction=0.15, unseen_test_fraction=0.25)
    pairs = split_seen_pairs(data.comparisons, split.seen, seed=0, val_fraction=0.1, test_fraction=0.2)
    tables = make_tables(data)
    train, test = to_batch(data.comparisons.take(pairs.train)), to_batch(data.comparisons.take(pairs.test))
    keys = [jax.random.PRNGKey(s) for s in SEEDS]
    dims = base.Dims(dim=data.dim, n_users=data.n_users)
    # Two "seeds": one eager init and a shrunk copy (cheaper than compiling a vmapped init per model).
    graphdef, one = base.init(cls, config, dims, keys[0])
    params = jax.tree.map(lambda x: jnp.stack([x, 0.9 * x if jnp.issubdtype(x.dtype, jnp.floating) else x]), one)
    train_items = np.unique(np.concatenate([data.comparisons.a[pairs.train], data.comparisons.b[pairs.train]]))
    params, _ = cls.prepare_params(config, data, train_items, params)  # DPA's stage 1; a no-op for the others
    context = cls.training_context(train, data.n_users, seed=0)
    path = pathlib.Path(root) / name / "model"
    save_model(
        path, model_config=config, dims=base.Dims(dim=data.dim, n_users=data.n_users), params=params,
        seen_states=compute_seen_states(graphdef, params, tables, data.n_users, context=context), seeds=SEEDS, dataset_meta=data.meta,
        seen_users=split.seen, split=split.to_dict(), best_val_loss=np.array([0.7, 0.6]), prior_strength=3.0,
        inference_steps=STEPS, inference_learning_rate=0.1,
    )
    reward = pluralign.load(path).reward(capacity=8)  # shared by the tests: its jitted kernels compile once
    return dict(data=data, split=split, tables=tables, context=context, test=test, graphdef=graphdef, params=params, path=path,
                reward=reward)


def resave(name: str, path, tmp_path_factory, **fewshot):
    """The shared bundle's model of `name` saved again at `path` with other few-shot choices
    (`save_model`'s keywords `fewshot`): (bundle, the shared artifact loaded, the new path)."""
    b = bundle(name, str(tmp_path_factory.getbasetemp() / "export_artifacts"))  # the shared one: read only here
    data, split, trained = b["data"], b["split"], pluralign.load(b["path"])
    path = save_model(
        path, model_config=model_config(name), dims=base.Dims(dim=data.dim, n_users=data.n_users), params=b["params"],
        seen_states=np.stack([trained.seen_states] * 2), seeds=SEEDS, dataset_meta=data.meta, seen_users=split.seen,
        split=split.to_dict(), best_val_loss=np.array([0.7, 0.6]), inference_steps=STEPS, inference_learning_rate=0.1,
        **fewshot,
    )
    return b, trained, path


@pytest.fixture(params=sorted(REGISTRY))
def setup(request, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "export_artifacts"
    return bundle(request.param, str(root)) | {"name": request.param}


@pytest.mark.slow
def test_save_load_same_params_and_seen_predictions(setup):
    loaded = pluralign.load(setup["path"])
    assert loaded.seed == SEEDS[1]  # the lowest recorded validation loss
    assert pluralign.load(setup["path"].parent, seed=SEEDS[0]).seed == SEEDS[0]  # the run dir works too
    for i, seed in enumerate(SEEDS):
        model = loaded.with_seed(seed)
        original = jax.tree.map(lambda x: x[i], setup["params"])
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), original, model.params))
        expected = predict_seen(setup["graphdef"], original, setup["tables"], setup["test"], context=setup["context"])
        np.testing.assert_allclose(model.seen_logits(setup["tables"], setup["test"]), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no seed 99"):
        loaded.with_seed(99)


@pytest.mark.slow
def test_fewshot_inference_is_the_evaluation_protocol(setup):
    data, split = setup["data"], setup["split"]
    reward = setup["reward"]
    trained = reward.trained
    users = split.unseen_test[:4]
    episodes = fewshot.make_episodes(data.comparisons, users, max_shots=6, mode="random", seed=1)
    adapt = fewshot.make_adapt_and_predict(trained.graphdef, STEPS, 0.1)
    support, query = padded_batch(data.comparisons, episodes.pool), padded_batch(data.comparisons, episodes.query)
    k = 5
    states, _ = adapt(trained.params, setup["tables"], support, jnp.int32(k), query, jnp.float32(3.0), jnp.asarray(split.seen))
    items = np.asarray(data.items, np.float32)
    for u in range(len(users)):
        rows = episodes.pool[u, :k]
        rows = rows[rows >= 0]
        c = data.comparisons.take(rows)
        mine = reward.infer(Support(e_a=items[c.a], e_b=items[c.b], label=c.label))
        np.testing.assert_allclose(mine, states[u], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, inference", [("pal_a", "bayes"), ("pal_a", "map"), ("vpl", "bayes")])
def test_reward_uses_the_prior_chosen_for_the_number_of_answers(name, inference, tmp_path, tmp_path_factory):
    """An artifact with a per-k prior choice: a new user with n answers is inferred with the setting
    chosen at the largest k ≤ n (the evaluation's `strength_at`), in the primary or the asked split mode
    (VPL: its encoder's posterior under that prior scale, `vpl.rescaled_prior`)."""
    by_k = {"random": {1: 1000.0, 4: 0.3}, "item_disjoint": {1: 0.3}}
    b, _, path = resave(name, tmp_path / "per_k", tmp_path_factory, prior_strength=3.0, prior_strength_by_k=by_k,
                        prior_mode="random", inference=inference)
    data, split = b["data"], b["split"]
    loaded = pluralign.load(path)
    reward, item_reward = loaded.reward(capacity=8), loaded.reward(capacity=8, split_mode="item_disjoint")
    with pytest.raises(ValueError, match="split mode 'nope'"):
        loaded.reward(split_mode="nope")
    users = split.unseen_test[:3]
    episodes = fewshot.make_episodes(data.comparisons, users, max_shots=6, mode="random", seed=1)
    adapt = fewshot.make_adapt_and_predict(loaded.graphdef, STEPS, 0.1, inference)
    support, query = padded_batch(data.comparisons, episodes.pool), padded_batch(data.comparisons, episodes.query)
    items = np.asarray(data.items, np.float32)
    for k in (1, 3, 6):
        expected = {}
        for mode, strength in (("random", fewshot.strength_at(by_k["random"], k)), ("item_disjoint", 0.3)):
            expected[mode], _ = adapt(loaded.params, b["tables"], support, jnp.int32(k), query, jnp.float32(strength),
                                      jnp.asarray(split.seen))
        for u in range(len(users)):
            c = data.comparisons.take(episodes.pool[u, :k])
            new_user = Support(e_a=items[c.a], e_b=items[c.b], label=c.label)
            np.testing.assert_allclose(reward.infer(new_user), expected["random"][u], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(item_reward.infer(new_user), expected["item_disjoint"][u], rtol=1e-5, atol=1e-5)
    # k=1..3 under the random mode's 1000 pins the user near the population; from 4 answers the prior is 0.3
    population = np.asarray(reward.infer(Support(e_a=items[:0], e_b=items[:0])))
    c = data.comparisons.take(episodes.pool[0, :3])
    pinned = np.asarray(reward.infer(Support(e_a=items[c.a], e_b=items[c.b], label=c.label)))
    assert np.abs(pinned - population).max() < 0.05 * max(np.abs(population).max(), 1.0)


def test_reward_follows_the_gate(tmp_path, tmp_path_factory):
    """An artifact whose gate keeps 1-2 answers at the population and personalizes from 3: a new
    user with 2 answers gets exactly the population state, one with 3 the evaluation's inference."""
    b, trained, path = resave("pal_a", tmp_path / "gated", tmp_path_factory, prior_strength=1.0,
                              prior_strength_by_k={"random": {1: 1.0, 3: 0.3}}, personalize_by_k={"random": {1: False, 3: True}},
                              prior_mode="random", inference="bayes")
    data, split = b["data"], b["split"]
    reward = pluralign.load(path).reward(capacity=8)
    items = np.asarray(data.items, np.float32)
    population = np.asarray(reward.infer(Support(e_a=items[:0], e_b=items[:0])))
    episodes = fewshot.make_episodes(data.comparisons, split.unseen_test[:2], max_shots=6, mode="random", seed=1)
    adapt = fewshot.make_adapt_and_predict(trained.graphdef, STEPS, 0.1, "bayes")
    support, query = padded_batch(data.comparisons, episodes.pool), padded_batch(data.comparisons, episodes.query)
    expected, _ = adapt(trained.params, b["tables"], support, jnp.int32(3), query, jnp.float32(0.3), jnp.asarray(split.seen))
    for u in range(2):
        c2, c3 = (data.comparisons.take(episodes.pool[u, :k]) for k in (2, 3))
        two = np.asarray(reward.infer(Support(e_a=items[c2.a], e_b=items[c2.b], label=c2.label)))
        np.testing.assert_allclose(two, population, atol=1e-6)
        three = np.asarray(reward.infer(Support(e_a=items[c3.a], e_b=items[c3.b], label=c3.label)))
        np.testing.assert_allclose(three, expected[u], rtol=1e-5, atol=1e-5)
        assert np.abs(three - population).max() > 1e-3  # the gate did let the answers count


@pytest.mark.slow
def test_online_updates_equal_batch_inference(setup):
    data = setup["data"]
    reward = setup["reward"]
    online = OnlineUser(reward, n_samples=32)
    c = data.comparisons.take(np.flatnonzero(data.comparisons.user == setup["split"].unseen_val[0])[:6])
    items = np.asarray(data.items, np.float32)
    for k in range(1, len(c) + 1):
        state = online.add(items[c.a[k - 1]], items[c.b[k - 1]], label=float(c.label[k - 1]))
        batch = reward.infer(Support(e_a=items[c.a[:k]], e_b=items[c.b[:k]], label=c.label[:k]))
        np.testing.assert_array_equal(state, batch)
    # Next question: BALD gains over candidate pairs, from posterior samples of the state.
    cand_a, cand_b = items[np.arange(0, 20)], items[np.arange(20, 40)]
    cand_b[0] = cand_a[0]  # a question with a foregone answer (a vs itself): nothing to learn
    index, gains = online.next_question(cand_a, cand_b)
    assert gains[0] < 1e-6
    assert gains.shape == (20,) and np.all(np.isfinite(gains)) and np.all((gains >= 0) & (gains <= np.log(2) + 1e-6))
    assert gains[index] == gains.max()
    if reward.state_dim == 0:  # no user state: an answer teaches nothing about the user
        assert np.all(gains == 0)
    else:
        assert gains.max() > 1e-4


def test_rewards_preference_matrix_and_best_of_n(setup):
    data = setup["data"]
    reward = setup["reward"]
    model, trained = reward.model, reward.trained
    items = jnp.asarray(data.items, jnp.float32)
    cands = items[:5]
    user = int(trained.seen_users[0])
    state = trained.seen_states[user]
    probs = np.asarray(reward.preference_matrix(None, cands, user))
    np.testing.assert_allclose(np.diag(probs), 0.5, atol=1e-6)
    np.testing.assert_allclose(probs + probs.T, 1.0, atol=1e-5)
    # The matrix is the model's own pairwise probability, for every model.
    pair = base.PairEmbeddings(e_x=jnp.zeros((1, reward.dim)), has_prompt=jnp.zeros((1,), bool), e_a=cands[1:2], e_b=cands[3:4])
    np.testing.assert_allclose(probs[1, 3], jax.nn.sigmoid(base.logits(model, state[None], pair))[0], rtol=1e-5, atol=1e-6)
    best, scores = reward.best_of_n(None, cands, user)
    assert scores.shape == (5,) and best == int(np.argmax(scores))
    if not reward.has_scalar_reward:  # GPM: ranked by average preference
        np.testing.assert_allclose(scores, (probs.sum(1) - 0.5) / 4, rtol=1e-5)
        with pytest.raises(TypeError, match="no scalar reward"):
            reward(None, cands, user)
        return
    r = reward(None, cands, user)
    assert r.shape == (5,) and np.all(np.isfinite(r))
    np.testing.assert_allclose(scores, r, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pal_b", "vpl"])  # the API around the reward, on a prompt-aware model of each kind
def test_batched_users_policy_hook_and_explicit_state(name, tmp_path_factory):
    setup = bundle(name, str(tmp_path_factory.getbasetemp() / "export_artifacts"))
    reward, trained = setup["reward"], setup["reward"].trained
    items = jnp.asarray(setup["data"].items, jnp.float32)
    cands = items[:5]
    user = int(trained.seen_users[0])
    r = reward(None, cands, user)
    state = trained.seen_states[user]
    direct = reward.model.reward(jnp.broadcast_to(state, (5, reward.state_dim)), jnp.zeros((5, reward.dim)),
                                 jnp.zeros((5,), bool), cands)
    np.testing.assert_allclose(r, direct, rtol=1e-5, atol=1e-6)
    # Batched prompts and users: [B, N]; row b is user b's rewards.
    users = [int(u) for u in trained.seen_users[:3]]
    prompts = items[10:13]
    batch = reward(prompts, jnp.stack([cands] * 3), users)
    assert batch.shape == (3, 5)
    np.testing.assert_allclose(batch[2], reward(prompts[2], cands, users[2]), rtol=1e-5, atol=1e-6)
    # The policy hook: pure, traceable inside the caller's jit, same numbers.
    hook = reward.policy_reward_fn(user)
    np.testing.assert_allclose(jax.jit(hook)(prompts, cands[:3]), reward(prompts, cands[:3, None, :], [user] * 3)[:, 0],
                               rtol=1e-5, atol=1e-6)
    # An explicit state (DPA: a direction) is used as given.
    np.testing.assert_allclose(reward(None, cands, UserState(np.asarray(trained.seen_states[user]))), r, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        reward(None, cands, UserState(np.zeros(reward.state_dim + 1)))
    with pytest.raises(KeyError, match="held out of training"):
        reward(None, cands, int(setup["split"].unseen_test[0]))
    with pytest.raises(ValueError, match="exceed capacity"):
        reward.infer(Support(e_a=items[:9], e_b=items[9:18]))


def test_user_embedding_export(setup, tmp_path):
    trained = pluralign.load(setup["path"])
    shapes = export_user_embeddings(trained, tmp_path)
    n_seen = len(setup["split"].seen)
    ids = pq.read_table(tmp_path / "users.parquet").to_pydict()
    assert ids["row"] == setup["split"].seen.tolist()
    for name, shape in shapes.items():
        array = np.load(tmp_path / f"{name}.npy")
        assert array.shape == shape and array.shape[0] == n_seen and np.all(np.isfinite(array))
    first = next(iter(shapes))
    if trained.model.user_state_dim:  # the first space is a function of the stored states
        assert not np.allclose(np.load(tmp_path / f"{first}.npy"), 0.0)
    assert (tmp_path / "users_pca.png").stat().st_size > 1000
    readme = (tmp_path / "README.md").read_text()
    assert all(f"`{name}.npy`" in readme for name in shapes)
    if "group" in ids:
        assert ids["group"] == [setup["data"].meta["truth"]["user_group"][r] for r in ids["row"]]


@pytest.mark.slow
def test_run_writes_an_artifact_that_reproduces_its_seen_user_metrics(tmp_path):
    from pluralign.data.sources import load_dataset
    from pluralign.evaluate import metrics
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.bt import BTConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    config = RunConfig(
        model=BTConfig(hidden=[8]),  # the cheapest family: this test is about run.py's wiring
        data=IdealPointConfig(n_users=30, n_items=60, comparisons_per_user=16, dim=8, n_groups=2, seed=0),
        train=TrainConfig(progress=False, max_epochs=2, batch_size=128, checkpoint=False),
        eval=EvalConfig(shots=[1], modes=["random"], draws=1, prior_strengths=[3.0], inference_steps=5),
        seeds=[0, 1], cache_dir=str(tmp_path / "cache"),
    )
    results = run(config, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")] == []  # no temp dirs left
    trained = pluralign.load(tmp_path / "run")
    assert trained.prior_strength == results["unseen"]["prior_strength"] and trained.record["seeds"] == [0, 1]
    by_k = {m: {str(k): v for k, v in chosen.items()} for m, chosen in results["unseen"]["prior_strength_by_k"].items()}
    assert trained.record["fewshot"]["prior_strength_by_k"] == by_k  # per k, per mode
    assert trained.record["fewshot"]["mode"] == results["unseen"]["mode"] == "random"
    assert trained.record["fewshot"]["prior_strength_by_mode"] == results["unseen"]["prior_strength_by_mode"]
    assert trained.record["model_config"] == {"name": "bt", "hidden": [8]}
    data = load_dataset(config.data, config.cache_dir)
    split = split_users(data.n_users, seed=0, unseen_val_fraction=0.1, unseen_test_fraction=0.2)
    pairs = split_seen_pairs(data.comparisons, split.seen, seed=0, val_fraction=0.1, test_fraction=0.1)
    test = data.comparisons.take(pairs.test)
    for i, seed in enumerate(config.seeds):
        logits = np.asarray(trained.with_seed(seed).seen_logits(make_tables(data), to_batch(test)))
        summary = metrics.summary(logits, test.label, test.weight, test.user, None)
        expected = results["seen"]["per_seed"][i]
        assert summary["accuracy"] == expected["accuracy"]
        np.testing.assert_allclose(summary["log_loss"], expected["log_loss"], rtol=1e-6)


def test_texts_are_embedded_with_the_recorded_encoder():
    from pluralign.embed.encoders import load_encoder
    from pluralign.export import encoder_from_meta

    encoder = load_encoder("wordllama")
    texts = ["a short answer", ("a prompt", "a long and detailed answer")]
    rebuilt = encoder_from_meta(encoder.describe())  # what a dataset's meta.json records
    np.testing.assert_array_equal(rebuilt.encode(texts), encoder.encode(texts))
    with pytest.raises(ValueError, match="records no encoder"):
        encoder_from_meta(None)
    with pytest.raises(ValueError, match="unknown kind"):
        encoder_from_meta({"kind": "word2vec"})


def test_load_rejects_a_directory_that_is_not_an_artifact(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a pluralign model artifact"):
        pluralign.load(tmp_path)


def test_reward_uses_the_fitted_residual_ratio(tmp_path, tmp_path_factory):
    """A lore artifact records each mode's residual ratio ρ; `reward.infer` infers a new user under
    the primary mode's ρ, as the evaluation's `adapt_and_predict` does, and a different ρ changes it."""
    b, _, path = resave("lore", tmp_path / "ratio", tmp_path_factory, prior_strength=1.0,
                        prior_strength_by_k={"random": {1: 1.0}, "item_disjoint": {1: 1.0}},
                        residual_ratio_by_mode={"random": 16.0}, prior_mode="random", inference="bayes")
    data, split = b["data"], b["split"]
    loaded = pluralign.load(path)
    reward, item_reward = loaded.reward(capacity=8), loaded.reward(capacity=8, split_mode="item_disjoint")
    assert (reward.residual_ratio, item_reward.residual_ratio) == (16.0, 1.0)  # a mode without one: the prior as fitted
    episodes = fewshot.make_episodes(data.comparisons, split.unseen_test[:2], max_shots=4, mode="random", seed=1)
    adapt = fewshot.make_adapt_and_predict(loaded.graphdef, STEPS, 0.1, "bayes")
    support, query = padded_batch(data.comparisons, episodes.pool), padded_batch(data.comparisons, episodes.query)
    expected = {r: adapt(loaded.params, b["tables"], support, jnp.int32(4), query, jnp.float32(1.0), jnp.asarray(split.seen),
                         jnp.float32(r))[0] for r in (1.0, 16.0)}
    items = np.asarray(data.items, np.float32)
    for u in range(2):
        c = data.comparisons.take(episodes.pool[u, :4])
        new_user = Support(e_a=items[c.a], e_b=items[c.b], label=c.label)
        np.testing.assert_allclose(reward.infer(new_user), expected[16.0][u], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(item_reward.infer(new_user), expected[1.0][u], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(expected[16.0]) - np.asarray(expected[1.0])).max() > 1e-3
