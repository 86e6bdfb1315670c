"""TensorBoard / W&B trackers: what the trainer logs arrives in the tools' own files."""

from __future__ import annotations

import struct

import pytest

from pluralign.train.tracking import Trackers, hyperparameters, log_results, scalars


def read_event_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard event file, read back through its TFRecord framing
    (uint64 length, uint32 crc, payload, uint32 crc) and tensorboardX's Event proto."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos: pos + 8])
        event = Event.FromString(data[pos + 12: pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_scalars_are_the_seed_mean_and_each_seed():
    values = scalars({"epoch": 3, "step": 40, "val_loss": [0.5, 0.7], "learning_rate": 0.01})
    assert values == pytest.approx({"val_loss": 0.6, "seed_0/val_loss": 0.5, "seed_1/val_loss": 0.7, "learning_rate": 0.01})


def test_tensorboard_event_file_is_written_and_reads_back(tmp_path):
    with Trackers(tmp_path, tensorboard=True, wandb=False) as trackers:
        trackers.log({"epoch": 0, "val_loss": [0.9], "grad_norm": [2.0]}, step=10)
        trackers.log({"epoch": 1, "val_loss": [0.6], "grad_norm": [1.5]}, step=20)
    (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    logged = read_event_scalars(event_file)
    assert logged["val_loss"] == [(10, pytest.approx(0.9)), (20, pytest.approx(0.6))]
    assert logged["grad_norm"] == [(10, pytest.approx(2.0)), (20, pytest.approx(1.5))]


def test_no_run_directory_no_trackers():
    assert Trackers(None, tensorboard=True, wandb=True).writers == []


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Trackers(tmp_path, tensorboard=False, wandb=True, config={"model": {"name": "bt"}}) as trackers:
        trackers.log({"epoch": 0, "val_loss": [0.9]}, step=10)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# --- evaluation metrics and hyperparameters at the end of a run -----------------------------


def read_event_files(folder) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    """Every scalar of every event file in `folder`, and the hparams plugin's session-start
    hyperparameters ({name: value}) where one was written."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    scalars_, hparams_ = {}, {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos: pos + 8])
            event = Event.FromString(data[pos + 12: pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(value.metadata.plugin_data.content).session_start_info
                    for name, v in info.hparams.items():
                        hparams_[name] = getattr(v, v.WhichOneof("kind"))
                elif not value.tag.startswith("_hparams_"):
                    scalars_.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars_, hparams_


RESULTS = {
    "seen": {"accuracy": 0.71, "log_loss": 0.58},
    "unseen": {
        "by_mode": {"random": {"1": {"accuracy": 0.6, "log_loss": 0.66}, "5": {"accuracy": 0.7, "log_loss": 0.6},
                               "20": {"accuracy": None, "n_users": 0, "reason": "no user has 20"}}},
        "val_by_mode": {"random": {"1": {"accuracy": 0.62, "log_loss": float("nan")}}},
    },
    "train": {"epochs_run": 3, "steps_per_epoch": 10},
    "config": {"model": {"name": "pal_b", "hidden": [16, 16], "dropout": None}, "train": {"learning_rate": 0.003,
               "tensorboard": True}, "eval": {"gate": True}, "seeds": [0, 1]},
}


def test_final_evaluation_and_hyperparameters_read_back_from_the_event_files(tmp_path):
    with Trackers(tmp_path, tensorboard=True, wandb=False) as trackers:  # the training curves, as during training
        trackers.log({"epoch": 0, "val_loss": [0.6]}, step=10)
    folder = log_results(tmp_path, RESULTS)
    logged, hparams_ = read_event_files(folder)
    assert logged["val_loss"] == [(10, pytest.approx(0.6))]  # training curves kept
    assert logged["eval/seen/accuracy"] == [(30, pytest.approx(0.71))]  # at the last training step
    assert logged["eval/seen/log_loss"] == [(30, pytest.approx(0.58))]
    assert logged["eval/unseen/random/accuracy"] == [(1, pytest.approx(0.6)), (5, pytest.approx(0.7))]  # step = k
    assert logged["eval/unseen/random/log_loss"] == [(1, pytest.approx(0.66)), (5, pytest.approx(0.6))]
    assert logged["eval/unseen/random/accuracy_k5"] == [(30, pytest.approx(0.7))]
    assert logged["eval/unseen_val/random/accuracy"] == [(1, pytest.approx(0.62))]
    assert "eval/unseen_val/random/log_loss" not in logged  # NaN: left out, not written as NaN
    assert not any("k20" in tag for tag in logged)  # a k no user reached
    assert hparams_ == {"model.name": "pal_b", "model.hidden": "[16, 16]", "model.dropout": "None",
                        "train.learning_rate": pytest.approx(0.003), "train.tensorboard": True, "eval.gate": True,
                        "seeds": "[0, 1]"}


def test_no_evaluation_event_files_when_tensorboard_is_off(tmp_path):
    off = {**RESULTS, "config": {**RESULTS["config"], "train": {"tensorboard": False}}}
    assert log_results(tmp_path, off) is None
    assert not (tmp_path / "tensorboard").exists()


def test_hyperparameters_flatten_to_values_tensorboard_accepts():
    flat = hyperparameters({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x", "f": False})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": "None", "e": "x", "f": False}


def test_final_evaluation_goes_to_the_wandb_run_training_used(tmp_path, monkeypatch):
    """train.wandb: the run's W&B run (same id as training's) gets the evaluation scalars in its
    summary, a k table per mode and user group, and the hyperparameters; with tensorboard off too.
    A stand-in `wandb` module records the calls (the real one is an extra)."""
    import sys
    import types

    calls = {"init": [], "log": [], "summary": {}, "finished": 0}

    class Run:
        summary = types.SimpleNamespace(update=lambda values: calls["summary"].update(values))

        def log(self, values, step=None):
            calls["log"].append(values)

        def finish(self):
            calls["finished"] += 1

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    fake = types.SimpleNamespace(init=lambda **kw: calls["init"].append(kw) or Run(), Table=Table)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with Trackers(tmp_path, tensorboard=False, wandb=True) as trackers:  # training
        trackers.log({"epoch": 0, "val_loss": [0.6]}, step=10)
    config = {**RESULTS["config"], "train": {"tensorboard": False, "wandb": True}}
    assert log_results(tmp_path, {**RESULTS, "config": config}) is None  # no TensorBoard folder
    assert not (tmp_path / "tensorboard").exists()
    training, final = calls["init"]
    assert final["id"] == training["id"] and final["resume"] == "allow"
    assert final["config"]["model.name"] == "pal_b" and final["config"]["train.wandb"] is True
    assert calls["summary"]["eval/seen/accuracy"] == pytest.approx(0.71)
    assert calls["summary"]["eval/unseen/random/accuracy_k5"] == pytest.approx(0.7)
    assert not any("k20" in tag for tag in calls["summary"])
    table = calls["log"][-1]["eval/unseen/random/by_k"]
    assert table.columns == ["k", "accuracy", "log_loss"]
    assert table.data == [[1, pytest.approx(0.6), pytest.approx(0.66)], [5, pytest.approx(0.7), pytest.approx(0.6)]]
    assert calls["log"][-1]["eval/unseen_val/random/by_k"].data == [[1, pytest.approx(0.62), None]]  # NaN log-loss left out
    assert calls["finished"] == 2
