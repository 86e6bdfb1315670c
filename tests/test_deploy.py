"""`eval=deploy` (docs/how-to/deploy.md): every user trains, and the few-shot prior's scale and
the personalization gate still come from held-out comparisons, the seen users' validation and
test pairs, into results.json and the exported model."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from pluralign import cli
from pluralign.export.artifact import MODEL_DIR
from pluralign.run import RESULTS_FILE, calibration_rows, load_and_split, run

TINY = ["data=ideal_point", "data.n_users=40", "data.n_items=80", "data.comparisons_per_user=40", "data.dim=8",
        "train=fast", "eval.shots=[1,2]", "eval.modes=[random]", "eval.draws=1", "eval.inference_steps=5",
        "eval.prior_scales=[0.1,1.0,10.0]", "eval.gate_min_users=5"]


def deploy_config(tmp_path, *overrides):
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        config = cli.run_config(compose(config_name="config", overrides=["eval=deploy", *TINY, *overrides]))
    config.cache_dir = str(tmp_path / "cache")
    return config


def test_deploy_holds_out_no_user_and_calibrates_on_every_users_held_out_pairs(tmp_path):
    config = deploy_config(tmp_path, "model=bt")
    assert config.eval.unseen_val_fraction == 0 and config.eval.unseen_test_fraction == 0
    (tmp_path / "run").mkdir()
    data = load_and_split(config, tmp_path / "run")
    assert len(data.split.seen) == 40 and len(data.split.unseen_val) == 0 and len(data.split.unseen_test) == 0
    rows = calibration_rows(data)
    train_rows = set(data.pairs.train.tolist())
    assert len(rows) > 0 and train_rows.isdisjoint(rows.tolist())  # held out: never trained on
    assert len(np.unique(data.comparisons.user[rows])) == 40  # every user calibrates


@pytest.mark.slow
def test_a_deploy_run_exports_the_prior_and_gate_fitted_on_held_out_comparisons(tmp_path):
    run_dir = tmp_path / "run"
    run(deploy_config(tmp_path, "model=linear_personal"), run_dir)
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    unseen = results["unseen"]
    assert results["n_users"] == {"seen": 40, "unseen_val": 0, "unseen_test": 0}
    decisions = unseen["shrinkage"]["random"]
    assert decisions, "no k was calibrated: the prior would be a default"
    for k, decision in decisions.items():
        assert decision["n_users"]["seen"] >= 5 and decision["n_users"]["unseen_val"] == 0
        assert decision["n_query_pairs"] > 0 and np.isfinite(decision["prior_scale"])
    fewshot = json.loads((run_dir / MODEL_DIR / "model.json").read_text())["fewshot"]
    assert fewshot["prior_strength_by_k"]["random"] == {k: d["prior_scale"] for k, d in decisions.items()}
    assert fewshot["personalize_by_k"]["random"] == {k: d["personalize"] for k, d in decisions.items()}
    assert unseen["accuracy_at_k"] == {}  # no unseen-test users: no unseen figure is claimed
    # The evaluation and the hyperparameters reach TensorBoard too (pluralign.train.tracking.log_results).
    tags, hparams = _event_tags(run_dir / "tensorboard")
    assert "eval/seen/accuracy" in tags and "val_loss" in tags
    assert hparams["eval.unseen_val_fraction"] == 0.0 and hparams["model.name"] == "linear_personal"


def _event_tags(folder) -> tuple[set[str], dict]:
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    tags, hparams = set(), {}
    for path in folder.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos: pos + 8])
            for value in Event.FromString(data[pos + 12: pos + 12 + length]).summary.value:
                tags.add(value.tag)
                if value.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(value.metadata.plugin_data.content).session_start_info
                    hparams = {name: getattr(v, v.WhichOneof("kind")) for name, v in info.hparams.items()}
            pos += 12 + length + 4
    return tags, hparams
