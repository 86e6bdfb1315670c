"""The Hydra layer: every config group composes, typos fail, a tiny run and a tiny multirun work."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from pluralign import cli
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.report import collect_results
from pluralign.models import REGISTRY
from pluralign.run import run
from tests.cli_run import COMMAND, cli_env, run_pluralign

CONF = pathlib.Path(cli.__file__).parent / "conf"
TINY_DATA = ["data.n_users=40", "data.n_items=120", "data.comparisons_per_user=20", "data.dim=8"]
TINY = ["train=fast", "eval=fast", *TINY_DATA]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("model", "data", "train", "eval", "experiment") for o in _options(g)],
)
def test_every_group_option_composes_into_a_typed_run_config(group, option):
    needs_path = option in ("disk", "comparisons_table", "ratings_table")  # no default source file
    overrides = [f"{group}={option}"] + (["data.path=/some/dataset"] if needs_path else [])
    config = cli.run_config(_compose(overrides))
    assert config.seeds
    assert config.model.name in REGISTRY
    if group == "model":
        assert config.model.name == option
        assert isinstance(config.model, REGISTRY[option][1])
    if group == "data" and option.startswith("ideal_point"):
        assert isinstance(config.data, IdealPointConfig)


def test_main_experiment_sweeps_three_models_over_three_seeds():
    cfg = _compose(["experiment=main"])
    assert list(cfg.seeds) == [0, 1, 2]


@pytest.mark.parametrize("typo", ["model.hiden=[3]", "sed=1", "train.learnin_rate=0.1", "data.n_user=3"])
def test_typos_fail_at_composition(typo):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        cli.run_config(_compose([typo]))


def test_wrong_type_fails():
    with pytest.raises(Exception, match="max_epochs"):
        _compose(["train.max_epochs=many"])


def test_seed_and_seeds():
    assert cli.run_config(_compose(["seed=7"])).seeds == [7]
    assert cli.run_config(_compose(["seeds=[1,2]"])).seeds == [1, 2]


@pytest.mark.slow
def test_run_from_composed_config_writes_results(tmp_path):
    config = cli.run_config(_compose(["model=pal_a", f"cache_dir={tmp_path / 'cache'}", *TINY]))
    results = run(config, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["model"] == "pal_a" and on_disk["dataset"] == "ideal_point"
    for key in ("seeds", "wall_seconds", "bayes_optimal_accuracy"):
        assert key in on_disk
    assert 0.0 <= on_disk["seen"]["accuracy"] <= 1.0
    assert set(on_disk["unseen"]["accuracy_at_k"]) == {"1", "5"}
    assert on_disk["unseen"]["accuracy_at_k"]["5"] == pytest.approx(results["unseen"]["accuracy_at_k"][5])
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    # where it came from, in the results and in the model artifact
    model_json = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    for record in (on_disk, model_json):
        assert record["provenance"]["versions"]["jax"] and record["provenance"]["pluralign"]
    assert isinstance(on_disk["train"]["warnings"], list)


def _pluralign(args, cwd, env_extra):
    return run_pluralign(args, cwd, env_extra)


@pytest.mark.slow
def test_tiny_multirun_with_the_basic_sweeper(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _pluralign(
        ["-m", "model=bt,pal_a,pal_b", f"hydra.sweep.dir={sweep}", *TINY],
        cwd=tmp_path, env_extra={"PLURALIGN_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = collect_results(sweep)
    assert sorted(r["model"] for r in results) == ["bt", "pal_a", "pal_b"]
    # The end-of-sweep callback printed one table with every model.
    assert "pluralign results" in proc.stdout
    for model in ("bt", "pal_a", "pal_b"):
        assert f"{model} " in proc.stdout
    # `pluralign report` prints the same table from the directory.
    report = _pluralign(["report", str(sweep)], cwd=tmp_path, env_extra={})
    assert report.returncode == 0 and "pal_b" in report.stdout


def test_report_on_a_directory_without_results_fails(tmp_path):
    proc = _pluralign(["report", str(tmp_path)], cwd=tmp_path, env_extra={})
    assert proc.returncode != 0


@pytest.mark.slow
def test_a_killed_run_restarted_in_its_directory_ends_with_the_same_results(tmp_path):
    """SIGKILL mid-training (no clean shutdown), restart with the same run dir: same numbers."""
    import signal
    import time

    args = ["model=pal_a", "eval=fast", *TINY_DATA, "train.max_epochs=12", "train.patience=100", "train.progress=false",
            "data.comparisons_per_user=60"]
    env = cli_env({"PLURALIGN_CACHE": str(tmp_path / "cache")})
    reference = _pluralign([*args, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=tmp_path, env_extra=env)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*COMMAND, *args, f"hydra.run.dir={killed_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    metrics_file = killed_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "results.json").exists()

    resumed = _pluralign([*args, f"hydra.run.dir={killed_dir}"], cwd=tmp_path, env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = json.loads((tmp_path / "reference" / "results.json").read_text())
    got = json.loads((killed_dir / "results.json").read_text())
    assert got["train"]["best_val_loss"] == want["train"]["best_val_loss"]
    assert got["seen"]["accuracy"] == want["seen"]["accuracy"]
    assert got["unseen"]["accuracy_at_k"] == want["unseen"]["accuracy_at_k"]
    # It resumed rather than started over: epoch 0 was trained (and logged) once.
    epochs = [json.loads(line)["epoch"] for line in metrics_file.read_text().splitlines()]
    assert epochs.count(0) == 1 and max(epochs) == 11


@pytest.mark.slow
def test_help_lists_commands_groups_with_descriptions(tmp_path):
    out = _pluralign(["--help"], cwd=tmp_path, env_extra={}).stdout
    for text in ("pluralign report DIR", "pluralign embed", "pluralign options", "pluralign --cfg job",
                 "hydra/launcher", "hydra/sweeper", "PAL-A: users are convex mixtures"):
        assert text in out
    assert "schema" not in out


def test_options_page_documents_every_train_and_eval_field():
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.options import field_docs, options_page
    from pluralign.train.trainer import TrainConfig

    for cls in (TrainConfig, EvalConfig):
        undocumented = [f.name for f in field_docs(cls) if not f.doc]
        assert not undocumented, f"{cls.__name__}: fields without a comment: {undocumented}"
    page = options_page("train")
    assert "train.batch_size = null" in page and "n_train // 50" in page
    assert "model.n_prototypes = 3" in options_page("model/pal_a")
    with pytest.raises(ValueError, match="unknown config group"):
        options_page("modle")


def test_docs_option_tables_are_the_generated_ones():
    """The options page's train.* and eval.* tables (docs/reference/options.md) are
    `reference_table`'s output: a field added, renamed or re-documented in the dataclass fails
    here until the page is regenerated."""
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.options import reference_table
    from pluralign.train.trainer import TrainConfig

    page = (CONF.parents[1] / "docs" / "reference" / "options.md").read_text()
    for cls, prefix in ((TrainConfig, "train."), (EvalConfig, "eval.")):
        assert reference_table(cls, prefix) in page, f"regenerate the docs table: reference_table({cls.__name__}, {prefix!r})"


@pytest.mark.slow
def test_bad_user_data_is_one_line_and_leaves_no_run_directory(tmp_path):
    (tmp_path / "prefs.csv").write_text("user,a,b,label\n1,x,y,A\n2,y,z,maybe\n")
    env = {"PLURALIGN_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    proc = _pluralign(["data=comparisons_table", f"data.path={tmp_path / 'prefs.csv'}", "data.encoder=wordllama",
                       *TINY[:2]], cwd=tmp_path, env_extra=env)
    assert proc.returncode == 1
    assert "pluralign: error: prefs.csv row 1: winner 'label' is 'maybe'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 2
    assert not (tmp_path / "outputs").exists()
