"""Experiment tracking: every validation record of a run, also sent to TensorBoard and W&B.

`metrics.jsonl` in the run directory is the record of truth (the trainer writes it); the
trackers here are views of the same numbers for the tools researchers already use:

- TensorBoard event files in `<run>/tensorboard/` through tensorboardX (a dependency; on by
  default, `train.tensorboard=false` turns it off). The viewer is the `tensorboard` extra
  (`pip install "pluralign[tensorboard]"`): `tensorboard --logdir outputs/`, or
  `--logdir multirun/...` to compare every run of a sweep.
- Weights & Biases (`train.wandb=true`; `pip install "pluralign[wandb]"`; imported only then).
  Offline runs (`WANDB_MODE=offline`) are synced later with `wandb sync`.

A record's per-seed lists are written as `seed_<i>/<name>` and their mean as `<name>`.

At the end of a run `log_results` adds the evaluation to the same event files
(docs/how-to/tracking.md): `eval/seen/{accuracy,log_loss}` at the last training step, the
k-shot curves of unseen-test users `eval/unseen/<mode>/{accuracy,log_loss}` with k as the step
(`eval/unseen_val/...` for the unseen-val users), the same figures as one scalar per k
(`eval/unseen/<mode>/accuracy_k<k>`), and the run's hyperparameters (model, data, train and
eval options, flattened) for TensorBoard's HPARAMS tab, with those scalars as its metrics. With
`train.wandb=true` the same figures go to the run's W&B run: summary values, a k-shot table per
split mode, the hyperparameters in its config (`log_results_wandb`).
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


# --- evaluation metrics and hyperparameters at the end of a run -------------------------------


def hyperparameters(config: dict) -> dict[str, bool | int | float | str]:
    """results.json `config` flattened to `model.hidden`-style keys with values TensorBoard's
    hparams accept: numbers, booleans and strings as they are, lists and None as text."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", config)
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def evaluation_scalars(results: dict) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]]:
    """(one value per tag, curves {tag: [(k, value)]}) of a results.json dict: seen-user accuracy
    and log-loss; per split mode and k, the unseen-test (and unseen-val) users' accuracy and
    log-loss. Undefined figures (a k no user reached, a NaN) are left out, never written as NaN."""
    values, curves = {}, {}
    for name in ("accuracy", "log_loss"):
        if _finite(results.get("seen", {}).get(name)):
            values[f"eval/seen/{name}"] = float(results["seen"][name])
    unseen = results.get("unseen", {})
    for part, by_mode in (("unseen", unseen.get("by_mode", {})), ("unseen_val", unseen.get("val_by_mode", {}))):
        for mode, curve in by_mode.items():
            for k, entry in sorted(curve.items(), key=lambda item: int(item[0])):
                for name in ("accuracy", "log_loss"):
                    value = entry.get(name)
                    if _finite(value):
                        values[f"eval/{part}/{mode}/{name}_k{int(k)}"] = float(value)
                        curves.setdefault(f"eval/{part}/{mode}/{name}", []).append((int(k), float(value)))
    return values, curves


def log_results(run_dir: pathlib.Path, results: dict) -> pathlib.Path | None:
    """Writes a finished run's evaluation and hyperparameters into `<run>/tensorboard/` (unless
    `train.tensorboard` is false in results.json's config), and into the run's W&B run where
    `train.wandb` is true (`log_results_wandb`); returns the TensorBoard folder, or None."""
    config = results.get("config", {})
    if config.get("train", {}).get("wandb", False):
        log_results_wandb(run_dir, results)
    if not config.get("train", {}).get("tensorboard", True):
        return None
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    folder = pathlib.Path(run_dir) / "tensorboard"
    values, curves = evaluation_scalars(results)
    train = results.get("train", {})
    last_step = int(train.get("epochs_run", 0)) * int(train.get("steps_per_epoch", 0))
    # Its own file: a second writer in the same second would otherwise replace the training curves'
    # file (tensorboardX names files by the second and the host).
    with SummaryWriter(str(folder), filename_suffix=".eval") as writer:
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=last_step)
        for tag, points in curves.items():
            for k, value in points:
                writer.add_scalar(tag, value, global_step=k)
        experiment, session_start, session_end = hparams(hyperparameters(config), values)
        for summary in (experiment, session_start, session_end):
            writer.file_writer.add_summary(summary)
    return folder


def log_results_wandb(run_dir: pathlib.Path, results: dict) -> None:
    """A finished run's evaluation in its W&B run (the one training logged to: same id, resumed):
    every `evaluation_scalars` value in the run summary, the k-shot curves as one table per split
    mode and user group (columns k, accuracy, log_loss), and the flattened hyperparameters in the
    run config."""
    values, curves = evaluation_scalars(results)
    run = _WandB(run_dir, hyperparameters(results.get("config", {})))
    try:
        import wandb

        run.run.summary.update(values)
        tables = {}
        for tag, points in curves.items():
            prefix, name = tag.rsplit("/", 1)  # eval/unseen/random, accuracy
            for k, value in points:
                tables.setdefault(prefix, {}).setdefault(k, {})[name] = value
        run.run.log({f"{prefix}/by_k": wandb.Table(columns=["k", "accuracy", "log_loss"],
                                                   data=[[k, row.get("accuracy"), row.get("log_loss")]
                                                         for k, row in sorted(by_k.items())])
                     for prefix, by_k in tables.items()})
    finally:
        run.close()
