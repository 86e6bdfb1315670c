"""Experiment tracking: every validation record of a run, also sent to TensorBoard and W&B.

`metrics.jsonl` in the run directory is the record of truth (the trainer writes it); the
trackers here are views of the same numbers for the tools researchers already use:

- TensorBoard event files in `<run>/tensorboard/` through tensorboardX (a dependency; on by
  default, `train.tensorboard=false` turns it off): `tensorboard --logdir outputs/` or
  `--logdir multirun/...` compares every run of a sweep.
- Weights & Biases (`train.wandb=true`; `pip install "pluralign[wandb]"`; imported only then).
  Offline runs (`WANDB_MODE=offline`) are synced later with `wandb sync`.

A record's per-seed lists are written as `seed_<i>/<name>` and their mean as `<name>`.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np


def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record -> flat {tag: value}: the seed mean, and each seed when several."""
    out = {}
    for name, value in record.items():
        if name in ("epoch", "step"):
            continue
        values = np.atleast_1d(np.asarray(value, dtype=np.float64))
        out[name] = float(np.mean(values))
        if values.size > 1:
            out.update({f"seed_{i}/{name}": float(v) for i, v in enumerate(values)})
    return out


class Trackers:
    """TensorBoard / W&B writers of one run; `log(record, step)` after every validation."""

    def __init__(self, run_dir: pathlib.Path | None, *, tensorboard: bool, wandb: bool, config: dict | None = None):
        self.writers = []
        if run_dir is None:
            return
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writers.append(_TensorBoard(SummaryWriter(str(pathlib.Path(run_dir) / "tensorboard"))))
        if wandb:
            self.writers.append(_WandB(run_dir, config or {}))

    def log(self, record: dict, step: int) -> None:
        values = scalars(record)
        for writer in self.writers:
            writer.log(values, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: pathlib.Path, config: dict):
        try:
            import wandb
        except ImportError as e:
            raise ImportError('train.wandb=true needs Weights & Biases: pip install "pluralign[wandb]"') from e
        # One W&B run per pluralign run directory: resuming the directory resumes the W&B run.
        run_id = hashlib.sha1(pathlib.Path(run_dir).resolve().as_posix().encode()).hexdigest()[:16]
        self.run = wandb.init(dir=str(run_dir), config=config, name=pathlib.Path(run_dir).name,
                              id=run_id, resume="allow", project="pluralign")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
