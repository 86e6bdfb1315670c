"""Sweeps: the submitit launcher (local executor), re-running a sweep, Optuna and Slurm configs.

A tiny two-job sweep runs through submitit's local executor; the same command again, on the
basic launcher, finds both jobs finished and runs nothing; after one results.json is removed,
only that job runs again. About 30 s on 2 CPU cores (three `pluralign` processes).
"""

from __future__ import annotations

import pytest
import json
import os

from hydra import compose, initialize_config_module

from pluralign import cli  # noqa: F401  (registers the structured configs)
from pluralign.evaluate.report import collect_results
from tests.cli_run import run_pluralign

TINY = ["train=fast", "eval=fast", "train.max_epochs=2", "data.n_users=30", "data.n_items=80",
        "data.comparisons_per_user=16", "data.dim=8"]


def _pluralign(args, cwd, cache):
    return run_pluralign(args, cwd, {"PLURALIGN_CACHE": str(cache)})


@pytest.mark.slow
def test_submitit_local_sweep_then_a_rerun_runs_only_what_is_missing(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=bt", "seed=0,1", f"hydra.sweep.dir={sweep}", *TINY]
    first = _pluralign([*args, "hydra/launcher=local"], tmp_path, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    results = collect_results(sweep)
    assert sorted(r["seeds"][0] for r in results) == [0, 1]
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
    files = {r["path"]: (os.stat(r["path"]).st_mtime_ns, json.dumps(r, sort_keys=True)) for r in results}

    # Same sweep on the basic launcher: the job directories do not depend on the launcher,
    # both results are complete, nothing runs and nothing is rewritten.
    again = _pluralign(args, tmp_path, tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped, already complete") == 2
    assert {r["path"]: (os.stat(r["path"]).st_mtime_ns, json.dumps(r, sort_keys=True)) for r in collect_results(sweep)} == files

    # A job without its results.json (a failed or killed one) runs again; the other does not.
    missing = sorted(files)[0]
    os.remove(missing)
    os.remove(os.path.join(os.path.dirname(missing), "run_config.json"))  # as if it never started
    third = _pluralign(args, tmp_path, tmp_path / "cache")
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("skipped, already complete") == 1
    assert os.path.exists(missing) and len(collect_results(sweep)) == 2


def _compose(overrides):
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_job_directories_are_named_by_their_overrides_not_by_launcher():
    cfg = _compose(["model=bt", "seed=3", "hydra/launcher=local", "cache_dir=/x", "train.progress=false"])
    # The launcher, the data cache and progress bars do not change the job's directory.
    assert cfg.hydra.sweep.subdir == "bt_ideal_point/model=bt,seed=3"


def test_slurm_launcher_is_one_override_away():
    launcher = _compose(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    for field in ("partition", "gpus_per_task", "timeout_min", "cpus_per_task", "mem_gb"):
        assert field in launcher
    assert launcher.gpus_per_task == 1


def test_optuna_sweeper_maximises_the_unseen_validation_accuracy():
    sweeper = _compose(["hydra/sweeper=tpe"]).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert "train.learning_rate" in sweeper.params


def test_optuna_study_is_stored_in_the_sweep_directory(tmp_path):
    sweeper = _compose(["hydra/sweeper=tpe_sqlite", f"hydra.sweep.dir={tmp_path / 'sweep'}"]).hydra.sweeper
    assert sweeper.direction == "maximize" and "train.learning_rate" in sweeper.params  # tpe's settings
    assert sweeper.storage == f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert (tmp_path / "sweep").is_dir()  # Optuna creates the file, not its folder


@pytest.mark.slow
def test_the_app_returns_the_mean_unseen_validation_accuracy_to_the_sweeper(tmp_path, monkeypatch):
    """The value Hydra hands a sweeper (Optuna maximises it) is what the app returns: the mean
    over k of the unseen-*val* accuracy in the run's results.json, never a test figure."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "cache"))
    cfg = _compose(["model=bt", "train.progress=false", f"cache_dir={tmp_path / 'cache'}", *TINY])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.mode = RunMode.MULTIRUN  # a sweep's job: no results table printed
    HydraConfig.instance().set_config(cfg)
    try:
        objective = cli.train_app(cfg)  # hydra.main passes a given config straight to the task
    finally:
        HydraConfig.instance().cfg = None
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    val = [v for v in results["unseen"]["val_accuracy_at_k"].values() if v is not None]
    assert val and 0.0 < objective < 1.0
    assert objective == pytest.approx(sum(val) / len(val), abs=1e-12)
    test = [v for v in results["unseen"]["accuracy_at_k"].values() if v is not None]
    assert objective != pytest.approx(sum(test) / len(test), abs=1e-12)  # the val split, not the test one
