"""Sweep job directories: one level per job, path values shortened (never nested folders),
and a re-run sweep finds its finished jobs again, in the new names and in the old nested ones."""

from __future__ import annotations

import shutil

import pytest
from hydra import compose, initialize_config_module

from pluralign.data.sources import dataset_path
from pluralign.data.synthetic import IdealPointConfig
from pluralign.rundir import MAX_JOB_NAME, job_dirname, short_value
from tests.cli_run import run_pluralign


def test_plain_overrides_keep_hydras_name():
    # What hydra.job.override_dirname gives them: finished sweeps keep their directories.
    assert job_dirname(["seed=3", "model=bt", "cache_dir=/x"], exclude_keys=["cache_dir"]) == "model=bt,seed=3"


def test_a_path_value_becomes_its_last_component_and_a_hash():
    name = job_dirname(["model=bt", "data=disk", "data.path=/data/sets/mine"])
    assert "/" not in name
    assert name.startswith("data.path=mine-") and name.endswith(",data=disk,model=bt")
    # another path with the same last component is another job
    assert short_value("/data/sets/mine") != short_value("/other/sets/mine")
    assert short_value("/data/sets/mine/") == short_value("/data/sets/mine/")
    assert short_value("0.01") == "0.01"


def test_an_overlong_name_is_capped_and_stays_distinct():
    a = job_dirname([f"data.name={'x' * 300}", "seed=1"])
    b = job_dirname([f"data.name={'x' * 300}", "seed=2"])
    assert len(a.encode()) <= MAX_JOB_NAME and a != b


def test_the_sweep_subdir_of_a_deep_data_path_is_one_level():
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["model=bt", "data=disk", "data.path=/some/deep/path"])
    subdir = cfg.hydra.sweep.subdir
    assert subdir.count("/") == 1 and subdir.startswith("bt_disk/data.path=path-")
    assert cfg.data.path == "/some/deep/path"  # the full value stays in the job's config


def _pluralign(args, cwd, cache):
    return run_pluralign(args, cwd, {"PLURALIGN_CACHE": str(cache)})


@pytest.mark.slow
def test_a_sweep_over_a_deep_data_path_writes_one_level_per_job_and_resumes(tmp_path):
    """About 30 s on 2 cores: one training job, then two re-runs that skip it."""
    data = dataset_path(IdealPointConfig(n_users=30, n_items=80, comparisons_per_user=16, dim=8), tmp_path / "a" / "b")
    assert len(data.relative_to(tmp_path).parts) >= 4  # a deep path
    sweep = tmp_path / "sweep"
    args = ["-m", "model=bt", "data=disk", f"data.path={data}", "train=fast", "eval=fast", "train.max_epochs=2",
            f"hydra.sweep.dir={sweep}"]
    first = _pluralign(args, tmp_path, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    results = sorted(sweep.rglob("results.json"))
    assert len(results) == 1
    job = results[0].parent
    assert job.parent == sweep / "bt_disk"  # one level per job below <model>_<data>
    assert job.name.startswith(f"data.path={data.name}-")

    again = _pluralign(args, tmp_path, tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped, already complete") == 1

    # A sweep from before the names were shortened: its job sits in nested folders named by the
    # raw override. It is found there, and the new-name directory Hydra opened is removed.
    legacy = sweep / "bt_disk" / f"data.path={data},data=disk,eval=fast,model=bt,train.max_epochs=2,train=fast"
    legacy.parent.mkdir(parents=True)
    shutil.move(job, legacy)
    third = _pluralign(args, tmp_path, tmp_path / "cache")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"skipped, already complete: {legacy / 'results.json'}" in third.stdout
    assert not job.exists()
    assert sorted(sweep.rglob("results.json")) == [legacy / "results.json"]
