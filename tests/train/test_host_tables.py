"""Tables larger than the device budget: host gather with prefetch trains the same parameters
as the on-device gather, and evaluation on the restricted tables gives the same logits."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pluralign.models import Dims, PALConfig, model_class
from pluralign.train.batches import make_tables, to_batch
from pluralign.train import host_tables
from pluralign.train.trainer import TrainConfig, Trainer, init_params, predict_seen

MODEL = PALConfig(name="pal_a", n_prototypes=3, latent_dim=4)


@pytest.fixture(scope="module")
def data(tiny_dataset):
    # float16 items, as large real tables are stored: both paths must cast the same way.
    dataset = dataclasses.replace(tiny_dataset, items=np.asarray(tiny_dataset.items, np.float16))
    comparisons = dataset.comparisons
    order = np.random.default_rng(0).permutation(len(comparisons))
    n_val = len(comparisons) // 7
    return dataset, comparisons.take(order[n_val:]), comparisons.take(order[:n_val])


def _fit(trainer, dataset, tables, train, val):
    graphdef, params = init_params(model_class(MODEL.name), MODEL, Dims(dataset.dim, dataset.n_users),
                                   jax.random.split(jax.random.PRNGKey(0), 2))
    state = trainer.init_state(params, jax.random.split(jax.random.PRNGKey(1), 2))
    return trainer.fit(state, tables, to_batch(train), to_batch(val))


def test_make_tables_keeps_tables_over_budget_on_the_host(data):
    dataset, _, _ = data
    assert isinstance(make_tables(dataset), type(make_tables(dataset, device_budget_mb=1e6)))
    on_host = make_tables(dataset, device_budget_mb=0.001)
    assert isinstance(on_host, host_tables.HostTables)
    assert on_host.items is dataset.items  # no copy: a memory-mapped table stays mapped


def test_host_gather_trains_the_same_parameters_as_device_gather(data):
    dataset, train, val = data
    config = TrainConfig(progress=False, max_epochs=3, batch_size=64, learning_rate=1e-2, patience=100)
    graphdef = init_params(model_class(MODEL.name), MODEL, Dims(dataset.dim, dataset.n_users),
                           jax.random.split(jax.random.PRNGKey(0), 2))[0]
    device_state, device_summary = _fit(Trainer(graphdef, config, len(train)), dataset, make_tables(dataset), train, val)
    # 3 steps a dispatch over an epoch that is not a multiple of 3: a short last chunk too.
    host_trainer = host_tables.HostGatherTrainer(graphdef, config, len(train), steps_per_dispatch=3)
    assert host_trainer.steps_per_epoch % 3 != 0
    host_state, host_summary = _fit(host_trainer, dataset, host_tables.host_tables(dataset), train, val)
    assert host_summary["best_epoch"] == device_summary["best_epoch"]
    np.testing.assert_allclose(host_summary["best_val_loss"], device_summary["best_val_loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(host_state.best_params), jax.tree.leaves(device_state.best_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # Training moved the parameters (the comparison is not between two untouched inits).
    _, init = init_params(model_class(MODEL.name), MODEL, Dims(dataset.dim, dataset.n_users),
                          jax.random.split(jax.random.PRNGKey(0), 2))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(host_state.best_params), jax.tree.leaves(init)))


def test_restricted_tables_give_the_same_logits(data):
    dataset, train, val = data
    graphdef, params = init_params(model_class(MODEL.name), MODEL, Dims(dataset.dim, dataset.n_users),
                                   jax.random.split(jax.random.PRNGKey(0), 1))
    one = jax.tree.map(lambda x: x[0], params)
    full = dataset.comparisons
    rows = np.arange(0, len(full), 5)
    small, renumbered = host_tables.restrict(host_tables.host_tables(dataset), full, rows)
    assert small.items.shape[0] < dataset.items.shape[0]
    expected = predict_seen(graphdef, one, make_tables(dataset), to_batch(full.take(rows)))
    got = predict_seen(graphdef, one, small, to_batch(renumbered.take(rows)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_step_rows_pairs_each_comparison_with_its_rows(data):
    dataset, train, _ = data
    tables = host_tables.host_tables(dataset)
    cols = {"a": train.a[:6].reshape(2, 3), "b": train.b[:6].reshape(2, 3), "prompt": np.array([[-1, 0, -1], [0, -1, 0]])}
    items, prompts, renumbered = host_tables.step_rows(tables, cols)
    assert items.shape == (2, 6, dataset.dim) and prompts.shape == (2, 3, dataset.dim)
    np.testing.assert_array_equal(np.take_along_axis(items, renumbered["a"][..., None], 1), dataset.items[cols["a"]])
    np.testing.assert_array_equal(np.take_along_axis(items, renumbered["b"][..., None], 1), dataset.items[cols["b"]])
    assert (renumbered["prompt"] == np.where(cols["prompt"] >= 0, [[0, 1, 2]], -1)).all()


@pytest.mark.slow
def test_run_over_the_device_budget_gives_the_results_of_a_run_within_it(tmp_path):
    from pluralign.data.synthetic import IdealPointConfig
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.run import RunConfig, run

    def results(budget):
        config = RunConfig(
            model=MODEL,
            data=IdealPointConfig(n_users=60, n_items=120, comparisons_per_user=30, dim=8, latent_dim=4, n_groups=3),
            train=TrainConfig(max_epochs=3, batch_size=64, learning_rate=1e-2, progress=False,
                              device_table_budget_mb=budget, host_steps_per_dispatch=4),
            eval=EvalConfig(shots=[1, 5], modes=["random", "item_disjoint"], draws=1, prior_strengths=[1.0]),
            seeds=[0, 1], cache_dir=str(tmp_path / "cache"),
        )
        return run(config, tmp_path / f"run-{budget}")

    within, over = results(None), results(0.001)  # 120 x 8 float32 items: 3.75 KB > 1 KB
    assert over["train"]["best_val_loss"] == pytest.approx(within["train"]["best_val_loss"], rel=1e-6)
    assert over["seen"]["accuracy"] == pytest.approx(within["seen"]["accuracy"], abs=1e-6)
    assert over["seen"]["log_loss"] == pytest.approx(within["seen"]["log_loss"], rel=1e-5)
    for mode, curve in within["unseen"]["by_mode"].items():
        for k, r in curve.items():
            assert over["unseen"]["by_mode"][mode][k]["accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
