"""TensorBoard / W&B trackers: what the trainer logs arrives in the tools' own files."""

from __future__ import annotations

import struct

import pytest

from pluralign.train.tracking import Trackers, scalars


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
