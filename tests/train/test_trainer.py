"""The trainer: resume after a kill, vmapped seeds, one compilation, checkpoints, early stopping, logs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.models import Dims, PALConfig, model_class, seen_logits
from pluralign.train.batches import make_tables, to_batch
from pluralign.train.trainer import (
    auto_batch_size,
    TrainConfig,
    Trainer,
    evaluate_seen,
    init_params,
    predict_in_chunks,
    restore_checkpoint,
)

MODEL = PALConfig(name="pal_a", n_prototypes=3, latent_dim=4)
METRIC_KEYS = {"epoch", "step", "train_objective", "train_bce", "val_loss", "val_accuracy", "learning_rate", "grad_norm", "seconds"}


@pytest.fixture(scope="module")
def data(tiny_dataset):
    """(dims, tables, train, val) from the shared tiny dataset: a random 85/15 split of its pairs."""
    comparisons = tiny_dataset.comparisons
    order = np.random.default_rng(0).permutation(len(comparisons))
    n_val = len(comparisons) * 15 // 100
    dims = Dims(dim=tiny_dataset.dim, n_users=tiny_dataset.n_users)
    train, val = to_batch(comparisons.take(order[n_val:])), to_batch(comparisons.take(order[:n_val]))
    return dims, make_tables(tiny_dataset), train, val


def config(**overrides) -> TrainConfig:
    defaults = dict(progress=False, max_epochs=5, batch_size=128, learning_rate=1e-2, patience=100)
    return TrainConfig(**{**defaults, **overrides})


def new_state(data, seeds, train_config):
    """A trainer and a freshly initialised state for these seeds, keyed the way `run.run` keys them."""
    dims, _, train, _ = data
    root = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    init_keys, train_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 2))(root), 1, 0)
    graphdef, params = init_params(model_class(MODEL.name), MODEL, dims, init_keys)
    trainer = Trainer(graphdef, train_config, n_train=int(train.label.shape[0]))
    return trainer, trainer.init_state(params, train_keys)


def fit(data, trainer, state, **kwargs):
    _, tables, train, val = data
    return trainer.fit(state, tables, train, val, **kwargs)


def host(tree):
    return jax.tree.map(np.asarray, tree)


def assert_trees_equal(x, y, rtol=0.0, atol=0.0):
    x_leaves, x_def = jax.tree.flatten(host(x))
    y_leaves, y_def = jax.tree.flatten(host(y))
    assert x_def == y_def
    for a, b in zip(x_leaves, y_leaves):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def seed_slice(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


class Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_after_kill_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    cfg = config(max_epochs=5)
    trainer, state = new_state(data, [0, 1], cfg)
    full, full_summary = fit(data, trainer, state, run_dir=tmp_path / "full")

    def kill_after_epoch_2(epoch):
        if epoch == 2:
            raise Killed

    trainer, state = new_state(data, [0, 1], cfg)
    with pytest.raises(Killed):
        fit(data, trainer, state, run_dir=tmp_path / "resumed", on_epoch_end=kill_after_epoch_2)

    # A new process: new trainer, and a fresh state from *other* seeds, so that everything
    # the resumed run ends with must have come from the checkpoint.
    epochs = []
    trainer, fresh = new_state(data, [7, 8], cfg)
    resumed, summary = fit(data, trainer, fresh, run_dir=tmp_path / "resumed", on_epoch_end=epochs.append)
    assert epochs and epochs[0] > 0, "the second fit started from scratch instead of the checkpoint"
    assert epochs[-1] == cfg.max_epochs - 1
    assert_trees_equal(resumed.best_params, full.best_params)
    assert_trees_equal(resumed.params, full.params)
    np.testing.assert_array_equal(np.asarray(resumed.best_val_loss), np.asarray(full.best_val_loss))
    np.testing.assert_array_equal(np.asarray(resumed.best_epoch), np.asarray(full.best_epoch))
    assert summary["epochs_run"] == full_summary["epochs_run"]

    # A finished run resumed once more trains no further and returns the same state.
    epochs_again = []
    trainer, fresh = new_state(data, [9, 10], cfg)
    again, _ = fit(data, trainer, fresh, run_dir=tmp_path / "resumed", on_epoch_end=epochs_again.append)
    assert epochs_again == []
    assert_trees_equal(again.best_params, full.best_params)

    # The interrupted + resumed log holds every validation exactly once.
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(cfg.max_epochs))


@pytest.mark.slow
def test_seeds_trained_together_equal_seeds_trained_alone(data):
    cfg = config(max_epochs=3)
    trainer, state = new_state(data, [0, 1], cfg)
    both, _ = fit(data, trainer, state)
    for i, seed in enumerate([0, 1]):
        trainer, state = new_state(data, [seed], cfg)
        alone, _ = fit(data, trainer, state)
        assert_trees_equal(seed_slice(both.best_params, i), seed_slice(alone.best_params, 0), rtol=1e-5, atol=1e-5)
        assert_trees_equal(seed_slice(both.params, i), seed_slice(alone.params, 0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(both.best_val_loss)[i], np.asarray(alone.best_val_loss)[0], rtol=1e-5)
    # ... and the two seeds are genuinely different replicas.
    p0, p1 = (jax.tree.leaves(host(seed_slice(both.params, i))) for i in (0, 1))
    assert all(not np.allclose(a, b) for a, b in zip(p0, p1) if a.size > 1)
    assert not np.allclose(*np.asarray(both.best_val_loss))


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """One two-seed fit with checkpoints, validating every 2 epochs of 5."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = config(max_epochs=5, eval_every=2)
    trainer, state = new_state(data, [0, 1], cfg)
    state, summary = fit(data, trainer, state, run_dir=run_dir)
    return trainer, state, summary, run_dir, cfg


def test_epoch_step_compiles_once(finished_run):
    trainer, _, summary, _, _ = finished_run
    assert summary["epochs_run"] == 5
    assert trainer.train_epoch._cache_size() == 1
    assert trainer.validate._cache_size() == 1


def test_metrics_jsonl_has_one_line_per_validation(finished_run):
    trainer, state, _, run_dir, cfg = finished_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # every eval_every epochs, and always after the last one
    assert [r["epoch"] for r in records] == [1, 3, 4]
    for r in records:
        assert set(r) == METRIC_KEYS
        for key in ("train_objective", "train_bce", "val_loss", "val_accuracy"):
            assert len(r[key]) == 2 and all(np.isfinite(r[key]))
        assert all(0.0 <= acc <= 1.0 for acc in r["val_accuracy"])
        assert len(r["grad_norm"]) == 2 and all(g > 0 for g in r["grad_norm"])
        assert r["step"] == (r["epoch"] + 1) * trainer.steps_per_epoch
    # the cosine schedule's learning rate at each record's last step, decaying
    assert [r["learning_rate"] for r in records] == pytest.approx([float(trainer.schedule(r["step"] - 1)) for r in records])
    assert records[0]["learning_rate"] > records[-1]["learning_rate"]
    # TensorBoard event files next to metrics.jsonl (tensorboard=True by default)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # The best validation loss of each seed is the smallest it logged, at the epoch it logged it.
    val_loss = np.array([r["val_loss"] for r in records])  # [n_evals, n_seeds]
    np.testing.assert_allclose(np.asarray(state.best_val_loss), val_loss.min(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.best_epoch), [records[j]["epoch"] for j in val_loss.argmin(axis=0)])
    assert [r["seconds"] for r in records] == sorted(r["seconds"] for r in records)


def test_save_load_gives_the_same_predictions(data, finished_run):
    _, tables, _, val = data
    trainer, state, _, run_dir, cfg = finished_run
    _, like = new_state(data, [5, 6], cfg)  # a different init: every value must come from disk
    restored, epoch, done = restore_checkpoint(run_dir, like=like)
    assert epoch == cfg.max_epochs - 1 and done
    assert_trees_equal(restored.best_params, state.best_params)

    @jax.jit
    def predict(params):
        return jax.vmap(lambda p: seen_logits(nnx.merge(trainer.graphdef, p), tables, val))(params)

    trained, loaded = np.asarray(predict(state.best_params)), np.asarray(predict(restored.best_params))
    untrained = np.asarray(predict(like.params))
    np.testing.assert_array_equal(loaded, trained)
    assert not np.allclose(untrained, trained)


def test_restore_without_checkpoint_raises(data, tmp_path):
    _, like = new_state(data, [0], config())
    with pytest.raises(FileNotFoundError):
        restore_checkpoint(tmp_path / "empty", like=like)


@pytest.mark.slow
def test_early_stopping_when_validation_stops_improving(data):
    # With a zero learning rate nothing changes after the first validation.
    cfg = config(learning_rate=0.0, schedule="constant", patience=2, patience_steps=0, max_epochs=20)
    trainer, state = new_state(data, [0, 1], cfg)
    initial = host(state.params)
    epochs = []
    final, summary = fit(data, trainer, state, on_epoch_end=epochs.append)
    assert summary["epochs_run"] == cfg.patience + 1 < cfg.max_epochs
    assert epochs == list(range(cfg.patience + 1))
    np.testing.assert_array_equal(np.asarray(final.best_epoch), [0, 0])
    np.testing.assert_array_equal(np.asarray(final.bad_evals), [cfg.patience] * 2)
    assert_trees_equal(final.best_params, initial)


@pytest.mark.slow
def test_training_improves_validation_loss(data):
    _, tables, _, val = data
    cfg = config(max_epochs=4)
    trainer, state = new_state(data, [0], cfg)
    before = float(evaluate_seen(trainer.graphdef, seed_slice(state.params, 0), tables, val)["loss"])
    final, _ = fit(data, trainer, state)
    after = float(evaluate_seen(trainer.graphdef, seed_slice(final.best_params, 0), tables, val)["loss"])
    np.testing.assert_allclose(after, float(final.best_val_loss[0]), rtol=1e-5)
    assert after < before - 0.05


def test_predict_in_chunks_matches_one_pass(data):
    _, tables, _, val = data
    trainer, state = new_state(data, [0], config())
    model = nnx.merge(trainer.graphdef, seed_slice(state.params, 0))
    direct = np.asarray(seen_logits(model, tables, val))
    chunked = np.asarray(predict_in_chunks(lambda b: seen_logits(model, tables, b), val, chunk=7))  # 360 % 7 != 0
    assert chunked.shape == direct.shape
    np.testing.assert_allclose(chunked, direct, rtol=1e-5, atol=1e-5)  # float32 sums differ with the chunk shape


def test_patience_counts_optimiser_steps_too(data):
    # Stopping needs `patience` validations without improvement AND patience_steps steps since the best.
    steps_per_epoch = new_state(data, [0], config())[0].steps_per_epoch
    cfg = config(learning_rate=0.0, schedule="constant", patience=2, patience_steps=6 * steps_per_epoch, max_epochs=20)
    trainer, state = new_state(data, [0], cfg)
    _, summary = fit(data, trainer, state)
    assert summary["epochs_run"] == 7  # best at epoch 0; stopped once 6 epochs of steps have passed


def test_auto_batch_size_gives_an_epoch_of_many_steps():
    assert auto_batch_size(1344) == 16  # a small data set: 84 steps per epoch, not 2
    assert auto_batch_size(10_000) == 128
    assert auto_batch_size(56_000) == 512  # capped
    for n in (10, 1000, 3000, 10**6):
        size = auto_batch_size(n)
        assert 16 <= size <= 512 and size & (size - 1) == 0
        assert n // size >= 50 or size == 16


def test_adamw_decays_parameters_but_not_fixed_variables():
    """Fixed state fitted before training (bt_residual's projection, DPA's transform) is an
    nnx.Variable: adamw's decoupled weight decay must leave it as it is."""
    import optax
    from flax import nnx

    from pluralign.models import REGISTRY, Dims
    from pluralign.numerics import optimizer_update
    from pluralign.train.trainer import make_optimizer

    cls, cfg = REGISTRY["bt_residual"]
    _, state = nnx.split(cls(cfg(name="bt_residual"), Dims(dim=8, n_users=4), rngs=nnx.Rngs(0)))
    tx = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.5, grad_clip=1.0), lambda step: jnp.float32(0.1))
    updates, _ = optimizer_update(tx, jax.tree.map(jnp.zeros_like, state), tx.init(state), state)
    new = optax.apply_updates(state, updates)
    np.testing.assert_array_equal(new["residual_projection"]["matrix"][...], state["residual_projection"]["matrix"][...])
    assert not np.allclose(new["reward_net"]["layers"][0]["kernel"][...], state["reward_net"]["layers"][0]["kernel"][...])
