"""A run directory stays consistent whatever happens to the run: any directory name, a crash
between any two writes, a second process, changed data, a diverging loss (pluralign.rundir,
pluralign.checkpoint_io, pluralign.run's resume and results writing)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import pluralign
from pluralign import rundir
from pluralign.checkpoint_io import abstract, checkpoint_manager, restore_latest, restore_pytree, save_pytree, save_step
from pluralign.data.format import write_dataset
from pluralign.data.sources import DiskDataConfig
from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.export.artifact import MODEL_DIR
from pluralign.jsonio import write_json_atomic
from pluralign.models.bt import BTConfig
from pluralign.run import RESULTS_FILE, RunConfig, finished_results, run
from pluralign.train.trainer import TrainConfig, TrainingDiverged

# Every kind of character a Hydra override_dirname can hold: brackets (lists), commas, '=',
# spaces, quotes, unicode.
AWKWARD_NAMES = ["seeds=[0,1],model=bt", "a b=[x, y]", "naïve=ü,日本", "q?x*[!a]"]


class Crash(Exception):
    pass


def crash_at(monkeypatch, name):
    """Makes `rundir.fault_point(name)` raise Crash in this process."""
    def hook(point):
        if point == name:
            raise Crash(point)
    monkeypatch.setattr(rundir, "fault_hook", hook)


def tiny_config(tmp_path, data=None, **train) -> RunConfig:
    return RunConfig(
        model=BTConfig(),
        data=data or IdealPointConfig(n_users=30, n_items=60, comparisons_per_user=20, dim=8, seed=0),
        train=TrainConfig(**{"progress": False, "max_epochs": 4, "batch_size": 64, "patience": 100, **train}),
        eval=EvalConfig(shots=[1, 2], modes=["random"], draws=1, prior_strengths=[1.0], inference_steps=3),
        seeds=[0, 1],
        cache_dir=str(tmp_path / "cache"),
    )


# ----------------------------------------------------------------- any directory name


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_orbax_save_restore_and_manager_work_in_any_directory_name(tmp_path, name):
    payload = {"leaves": [np.arange(3.0), np.ones((2, 2), np.float32)]}
    save_pytree(tmp_path / name / "state", payload)
    restored = restore_pytree(tmp_path / name / "state", {"leaves": [np.zeros(3), np.zeros((2, 2), np.float32)]})
    np.testing.assert_array_equal(restored["leaves"][0], payload["leaves"][0])
    with checkpoint_manager(tmp_path / name / "checkpoints") as manager:
        save_step(manager, 3, payload)
        manager.wait_until_finished()
    with checkpoint_manager(tmp_path / name / "checkpoints") as manager:
        assert manager.latest_step() == 3
        back = restore_latest(manager, abstract(payload))
    np.testing.assert_array_equal(back["leaves"][1], payload["leaves"][1])
    assert not list(tmp_path.glob("pluralign-orbax-*")), "the alias must not be left behind"


def test_a_model_artifact_saves_and_loads_in_any_directory_name(tmp_path):
    name = " ".join(AWKWARD_NAMES)  # every awkward character in one directory name
    import jax
    import jax.numpy as jnp

    from pluralign.export.artifact import save_model
    from pluralign.models import Dims, base, model_class

    dims = Dims(dim=4, n_users=3)
    _, params = base.init(model_class("bt"), pluralign_config("bt"), dims, jax.random.PRNGKey(0))
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), params)
    path = save_model(tmp_path / name / MODEL_DIR, model_config=pluralign_config("bt"), dims=dims, params=stacked,
                      seen_states=np.zeros((2, 3, 0), np.float32), seeds=[0, 1], dataset_meta={"name": "d"},
                      seen_users=np.arange(3))
    loaded = pluralign.load(tmp_path / name)
    assert loaded.path == path
    for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def pluralign_config(name):
    from pluralign.config import model_config

    return model_config(name)


BRACKETED = "bt_ideal_point/eval=fast,model=bt,seeds=[0,1],train=fast"  # the README's own sweep names


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run in a bracketed directory: (config, run_dir, results). Tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    config = tiny_config(root)
    return config, root / BRACKETED, run(config, root / BRACKETED)


def copy_of(finished, tmp_path) -> pathlib.Path:
    import shutil

    return pathlib.Path(shutil.copytree(finished[1], tmp_path / BRACKETED))


@pytest.mark.slow
def test_a_run_in_a_bracketed_directory_resumes_and_loads(tmp_path, finished):
    config, _, reference = finished
    run_dir = tmp_path / BRACKETED

    def crash_after_epoch_1(epoch):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run(config, run_dir, on_epoch_end=crash_after_epoch_1)
    epochs = []
    resumed = run(config, run_dir, on_epoch_end=epochs.append)
    assert epochs[0] == 2, "resumed from scratch: the checkpoint in the bracketed directory was not readable"
    assert resumed["seen"]["accuracy"] == reference["seen"]["accuracy"]
    model = pluralign.load(run_dir)
    assert model.record["seeds"] == [0, 1]


@pytest.mark.slow
def test_changed_evaluation_settings_re_evaluate_the_trained_run_and_a_changed_split_is_refused(tmp_path, finished):
    """Other eval.shots: the finished checkpoints are restored (no epoch trained again) and scored
    at the new k; results.json and run_config.json say so. Another split is another training set."""
    import dataclasses

    config, _, reference = finished
    run_dir = copy_of(finished, tmp_path)
    epochs = []
    other = dataclasses.replace(config, eval=dataclasses.replace(config.eval, shots=[1, 3]))
    again = run(other, run_dir, on_epoch_end=epochs.append)
    assert epochs == [] and again["seen"]["accuracy"] == reference["seen"]["accuracy"]
    assert set(again["unseen"]["accuracy_at_k"]) == {1, 3}
    assert json.loads((run_dir / "run_config.json").read_text())["eval"]["shots"] == [1, 3]
    split = dataclasses.replace(other, eval=dataclasses.replace(other.eval, split_seed=1))
    with pytest.raises(ValueError, match="differs in: eval.split_seed"):
        run(split, run_dir)


# ----------------------------------------------------------------- complete = results + model


@pytest.mark.slow
def test_a_crash_between_model_and_results_is_not_complete_and_reruns(tmp_path, finished, monkeypatch):
    config, run_dir = finished[0], copy_of(finished, tmp_path)
    (run_dir / RESULTS_FILE).unlink()
    crash_at(monkeypatch, "after_model")
    with pytest.raises(Crash):
        run(config, run_dir)  # trained already: evaluates and writes the model again
    assert not (run_dir / RESULTS_FILE).exists(), "results.json must come last"
    assert finished_results(run_dir, config) is None
    monkeypatch.setattr(rundir, "fault_hook", None)
    results = run(config, run_dir)
    assert finished_results(run_dir, config) == json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["status"] == "complete"


@pytest.mark.slow
def test_results_without_a_complete_model_are_not_complete(tmp_path, finished):
    """What a kill between results.json and model/ left before: the re-run must write the model."""
    import shutil

    config, run_dir = finished[0], copy_of(finished, tmp_path)
    assert finished_results(run_dir, config) is not None
    shutil.rmtree(run_dir / MODEL_DIR / "state")  # a partial model
    assert finished_results(run_dir, config) is None
    shutil.rmtree(run_dir / MODEL_DIR)
    (run_dir / ".model.tmp-999999999").mkdir()  # a save killed midway, by a process long gone
    assert finished_results(run_dir, config) is None
    run(config, run_dir)
    assert finished_results(run_dir, config) is not None
    pluralign.load(run_dir)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".model.")]


@pytest.mark.slow
def test_a_crash_while_the_model_is_written_leaves_no_partial_model(tmp_path, finished, monkeypatch):
    import shutil

    config, run_dir = finished[0], copy_of(finished, tmp_path)
    shutil.rmtree(run_dir / MODEL_DIR)
    (run_dir / RESULTS_FILE).unlink()
    crash_at(monkeypatch, "model_written_before_rename")
    with pytest.raises(Crash):
        run(config, run_dir)
    assert not (run_dir / MODEL_DIR).exists() and not (run_dir / RESULTS_FILE).exists()
    monkeypatch.setattr(rundir, "fault_hook", None)
    run(config, run_dir)
    pluralign.load(run_dir)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".model.")]


# ----------------------------------------------------------------- one writer per run directory


def test_a_second_writer_is_refused_while_the_first_holds_the_directory(tmp_path):
    config = tiny_config(tmp_path)
    with rundir.exclusive(tmp_path / "run"):
        with pytest.raises(rundir.RunDirLocked, match=f"pid {os.getpid()}"):
            run(config, tmp_path / "run")
    with rundir.exclusive(tmp_path / "run"):  # released: usable again
        pass


HOLD_LOCK = """
import sys, time
from pluralign import rundir
with rundir.exclusive(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_another_process_is_named_and_its_lock_is_taken_over_when_it_dies(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunDirLocked, match=f"pid {holder.pid} on"):
            with rundir.exclusive(tmp_path / "run"):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean release
        holder.wait()
    assert (tmp_path / "run" / rundir.LOCK_FILE).exists()  # the stale lock file is still there ...
    with rundir.exclusive(tmp_path / "run"):  # ... and taken over
        assert f"pid {os.getpid()}" in (tmp_path / "run" / rundir.LOCK_FILE).read_text()


@pytest.mark.slow
def test_a_run_killed_between_model_and_results_resumes_to_a_complete_run(tmp_path):
    """The real thing: PLURALIGN_FAULT kills the process (os._exit, no cleanup) after model/."""
    config_code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from test_run_reliability import tiny_config; "
        "import pathlib; from pluralign.run import run; run(tiny_config(pathlib.Path(sys.argv[1])), "
        "pathlib.Path(sys.argv[1]) / 'run')"
    )
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1]), rundir.FAULT_ENV: "after_model"}
    proc = subprocess.run([sys.executable, "-c", config_code, str(tmp_path), str(pathlib.Path(__file__).parent)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == rundir.FAULT_EXIT_CODE, proc.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert (run_dir / MODEL_DIR).exists() and not (run_dir / RESULTS_FILE).exists()
    config = tiny_config(tmp_path)
    assert finished_results(run_dir, config) is None
    run(config, run_dir)  # the dead process's lock is taken over
    assert finished_results(run_dir, config) is not None


# ----------------------------------------------------------------- changed data


def disk_data(tmp_path, seed: int) -> DiskDataConfig:
    ds = make_ideal_point(IdealPointConfig(n_users=30, n_items=60, comparisons_per_user=20, dim=8, seed=seed))
    write_dataset(tmp_path / "data", ds.items, ds.comparisons, meta=ds.meta, overwrite=True)
    return DiskDataConfig(path=str(tmp_path / "data"))


@pytest.mark.slow
def test_data_changed_between_a_crash_and_the_resume_is_refused(tmp_path):
    config = tiny_config(tmp_path, data=disk_data(tmp_path, seed=0))

    def crash_after_epoch_1(epoch):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run(config, tmp_path / "run", on_epoch_end=crash_after_epoch_1)
    disk_data(tmp_path, seed=1)  # same path, same shapes, other content
    with pytest.raises(ValueError, match="changed since the run started"):
        run(config, tmp_path / "run")


@pytest.mark.slow
def test_data_changed_after_a_finished_run_is_not_complete(tmp_path):
    config = tiny_config(tmp_path, data=disk_data(tmp_path, seed=0), checkpoint=False)
    run(config, tmp_path / "run")
    assert finished_results(tmp_path / "run", config) is not None
    disk_data(tmp_path, seed=1)
    assert finished_results(tmp_path / "run", config) is None


# ----------------------------------------------------------------- non-finite numbers


@pytest.mark.slow
def test_a_diverging_loss_stops_training_and_writes_no_results(tmp_path):
    config = tiny_config(tmp_path, optimizer="sgd", schedule="constant", learning_rate=1e38, grad_clip=0.0)
    with pytest.raises(TrainingDiverged, match="diverged at epoch 0"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
def test_divergence_after_good_epochs_keeps_their_checkpoint(tmp_path, monkeypatch):
    import jax

    from pluralign.train import trainer as trainer_module

    config = tiny_config(tmp_path)
    original = trainer_module.Trainer._train_epoch

    def poisoned(self, state, tables, data, epoch, context=None):  # the loss becomes NaN from epoch 2 on
        state, metrics = original(self, state, tables, data, epoch, context)
        nan_if_late = jax.numpy.where(epoch >= 2, jax.numpy.nan, 0.0)
        params = jax.tree.map(lambda x: x + nan_if_late.astype(x.dtype) if x.dtype.kind == "f" else x, state.params)
        return state.replace(params=params), {**metrics, "objective": metrics["objective"] + nan_if_late}

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2.*checkpoint of epoch 1"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
    monkeypatch.undo()
    with checkpoint_manager(tmp_path / "run" / "checkpoints") as manager:
        assert manager.latest_step() == 1


def test_json_files_refuse_nan_and_infinity_and_name_where(tmp_path):
    with pytest.raises(ValueError, match=r"seen\.accuracy"):
        write_json_atomic(tmp_path / "x.json", {"seen": {"accuracy": float("nan")}})
    with pytest.raises(ValueError, match=r"train\.best_val_loss\.1"):
        write_json_atomic(tmp_path / "x.json", {"train": {"best_val_loss": [0.5, float("inf")]}})
    assert not (tmp_path / "x.json").exists()


def test_undefined_metrics_are_written_as_null_with_the_reason(tmp_path):
    from pluralign.run import write_results

    written = write_results(tmp_path, {"status": "complete", "seen": {"accuracy": float("nan"), "log_loss": 0.7}})
    on_disk = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert on_disk == written
    assert on_disk["seen"]["accuracy"] is None and on_disk["seen"]["log_loss"] == 0.7
    assert "decided label" in on_disk["undefined"]["seen.accuracy"]


def test_accuracy_of_no_decided_comparison_is_undefined_not_zero():
    from pluralign.evaluate import metrics

    logits = np.array([1.0, -2.0, 0.5])
    assert np.isnan(metrics.accuracy(logits, np.full(3, 0.5), np.ones(3)))  # every label a tie
    assert np.isnan(metrics.accuracy(logits, np.ones(3), np.zeros(3)))  # every weight 0
    summary = metrics.summary(logits, np.full(3, 0.5), np.ones(3), np.array([0, 0, 1]), np.array([0, 1]))
    assert np.isnan(summary["accuracy"]) and np.isnan(summary["worst_group_accuracy"])
    assert metrics.accuracy(logits, np.array([0.0, 0.5, 0.0]), np.ones(3)) == 0.0  # defined: 0 of 2 right


@pytest.mark.parametrize("per_user, message", [(0, "no comparisons of seen users"),
                                               (1, "every seen user has at most one comparison")])
def test_too_little_data_for_validation_pairs_says_so(tmp_path, per_user, message):
    from pluralign.data import Comparisons

    n_users = 6 if per_user else 0
    user = np.repeat(np.arange(n_users), per_user).astype(np.int32)
    comparisons = Comparisons.from_arrays(user=user, a=np.zeros(len(user), np.int32), b=np.ones(len(user), np.int32),
                                          label=np.ones(len(user), np.float32))
    write_dataset(tmp_path / "data", np.eye(3, dtype=np.float32), comparisons, meta={"n_users": n_users})
    config = tiny_config(tmp_path, data=DiskDataConfig(path=str(tmp_path / "data")))
    with pytest.raises(ValueError, match=message) as error:
        run(config, tmp_path / "run")
    assert "pair_val_fraction" not in str(error.value)
