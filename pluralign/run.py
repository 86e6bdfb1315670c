"""One training-and-evaluation run, from typed configs to `results.json`.

This is the library's "train.py": `_run` reads top to bottom as its stages, each a function
that can be called on its own. Hydra stays in `pluralign.cli`; everything here takes dataclasses.

  1. `load_and_split`: load the dataset (generating and caching synthetic data), split users
     into seen / unseen-val / unseen-test and seen users' pairs into train / val / test;
  2. `build_models`: one model per seed (keys, initialisation, `prepare_stage`: a family's
     stage before comparison training, e.g. DPA's attribute regression);
  3. `train_models`: all seeds in one vmapped program, early stopping on seen-user validation
     loss, with checkpoints and resume;
  4. `evaluate_seen_users` on held-out pairs; `evaluate_unseen_users` k-shot with θ frozen, the
     few-shot prior's scale and the personalization gate decided on calibration users (seen
     users' held-out comparisons and unseen-val users; `pluralign.evaluate.shrinkage`);
  5. `assemble_results`, then `write_artifacts`: the model (`model/`), then `results.json`
     (atomically) into the run directory: a run is finished when both are there
     (`finished_results`).

One process at a time works in a run directory (`pluralign.rundir`), and a resume continues
only the same config on the same data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.data import Comparisons, PairSplit, PreferenceDataset, UserSplit, split_seen_pairs, split_users
from pluralign.data import duplicates
from pluralign.data.format import content_fingerprint
from pluralign.data.sources import dataset_path, load_dataset
from pluralign.evaluate import fewshot, metrics, shrinkage
from pluralign.jsonio import flatten as _flatten, json_default, nan_to_null, non_finite_paths, write_json_atomic
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.evaluate.sample_size import split_warnings
from pluralign import rundir
from pluralign.config_checks import check_run_config
from pluralign.models import BT, LoReConfig, base, model_class
from pluralign.provenance import provenance
from pluralign.train import distributed, host_tables, meta, tracking
from pluralign.train.batches import make_tables, to_batch
from pluralign.train.trainer import TrainConfig, init_params, predict_seen

RESULTS_FILE = "results.json"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunConfig:
    model: Any  # a model family's config dataclass (BTConfig, PALConfig, ...)
    data: Any  # a data source config (IdealPointConfig, DiskDataConfig, ...)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    cache_dir: str | None = None  # synthetic-data cache; None = $PLURALIGN_CACHE or ~/.cache/pluralign


def _fingerprint(config: RunConfig) -> dict:
    """The parts of a config that determine a run's result (not progress bars or cache paths)."""
    d = json.loads(json.dumps(dataclasses.asdict(config), default=json_default))
    d.pop("cache_dir", None)
    d["train"].pop("progress", None)
    for how in ("distributed", "device_table_budget_mb", "host_steps_per_dispatch"):
        d["train"].pop(how, None)  # where and on how many processes it trains does not change the result
    return d


RUN_CONFIG_FILE = "run_config.json"
DATA_FINGERPRINT = "dataset_fingerprint"  # run_config.json's record of the data's content


# The eval.* fields that decide which pairs train the model; every other eval.* field acts only
# after training, so a finished run re-evaluates under a change of them instead of refusing it.
SPLIT_FIELDS = ("eval.split_seed", "eval.unseen_val_fraction", "eval.unseen_test_fraction", "eval.pair_val_fraction",
                "eval.pair_test_fraction")


def _check_resumable(run_dir: pathlib.Path, config: RunConfig) -> None:
    """A run directory with checkpoints resumes only the same training config; otherwise fail
    clearly. Evaluation settings (eval.* but the split) may differ: the trained checkpoints are
    restored and evaluated under the new ones (a re-run with other eval.shots, say)."""
    path = run_dir / RUN_CONFIG_FILE
    if path.exists() and holds_checkpoints(run_dir):
        old, new = json.loads(path.read_text()), _fingerprint(config)
        old.pop(DATA_FINGERPRINT, None)
        if old != new:
            flat_old, flat_new = _flatten(old), _flatten(new)
            diff = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
            if all(k.startswith("eval.") and k not in SPLIT_FIELDS for k in diff):
                log.info("%s: resuming the trained checkpoints under changed evaluation settings (%s)", run_dir,
                         ", ".join(diff))
                return
            raise ValueError(
                f"{run_dir}: holds checkpoints of a run with a different config (differs in: {', '.join(diff)}). "
                "Resume only with the same training config (eval.* settings other than the split may change: the "
                "trained run is evaluated again); start a changed config in a new run directory."
            )


def holds_checkpoints(run_dir: pathlib.Path) -> bool:
    """Whether a run directory holds training checkpoints: the model's, the population stage's or a
    rank candidate's (`train_rank_candidates`)."""
    return any((d / "checkpoints").exists() for d in (run_dir, run_dir / "population", *run_dir.glob("rank_*")))


def _check_same_data(run_dir: pathlib.Path, config: RunConfig, data_dir: pathlib.Path) -> None:
    """A run directory with checkpoints resumes only on the same data (by content, not by path);
    records the config and the data's fingerprint for the next resume and `finished_results`."""
    path = run_dir / RUN_CONFIG_FILE
    fingerprint = content_fingerprint(data_dir)
    if path.exists() and holds_checkpoints(run_dir):
        old = json.loads(path.read_text()).get(DATA_FINGERPRINT)
        if old is not None and old != fingerprint:
            raise ValueError(
                f"{run_dir}: holds checkpoints trained on other data: the content of {data_dir} changed since "
                f"the run started (fingerprint {old} -> {fingerprint}). Start a new run directory for the new "
                "data, or put the old data back to resume."
            )
    if distributed.is_primary():  # with several processes only process 0 writes files
        write_json_atomic(path, {**_fingerprint(config), DATA_FINGERPRINT: fingerprint})


def training_warnings(summary: dict, config: TrainConfig, seen_accuracy: float) -> list[str]:
    """Signs that a run is undertrained, for the log and `results.json` (`train.warnings`)."""
    warnings = []
    steps = summary["epochs_run"] * summary["steps_per_epoch"]
    if steps < 500:
        warnings.append(f"only {steps} optimiser steps ({summary['epochs_run']} epochs of {summary['steps_per_epoch']}): "
                        "lower train.batch_size or raise train.max_epochs")
    first = [s for s, best in enumerate(summary["best_epoch"]) if best < 2 * config.eval_every]
    if first and summary["epochs_run"] < config.max_epochs:
        warnings.append(f"seed replica(s) {first} (0-based) stopped with their best validation among the first two: "
                        "raise train.patience / train.patience_steps or lower train.learning_rate")
    if seen_accuracy < 0.55:
        warnings.append(f"seen accuracy {seen_accuracy:.3f} is near chance: the model may have learned nothing")
    for warning in warnings:
        log.warning("likely undertrained: %s", warning)
    return warnings


def finished_results(run_dir: str | os.PathLike, config: RunConfig) -> dict | None:
    """The results of `run_dir` if it holds a complete run of this same config on this same data
    (a complete results.json and a complete model/), else None.

    Lets a re-run sweep skip the jobs that finished and redo only missing or failed ones
    (a failed job has no complete results.json and resumes from its checkpoint).
    """
    from pluralign.export.artifact import MODEL_DIR, is_complete

    run_dir = pathlib.Path(run_dir)
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        recorded = json.loads((run_dir / RUN_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    fingerprint = recorded.pop(DATA_FINGERPRINT, None)
    if results.get("status") != "complete" or recorded != _fingerprint(config) or not is_complete(run_dir / MODEL_DIR):
        return None
    try:
        same_data = fingerprint == content_fingerprint(dataset_path(config.data, config.cache_dir))
    except (OSError, ValueError):  # the data is gone or unreadable: the run will say so
        return None
    return results if same_data else None


def no_validation_pairs(dataset, seen_users: np.ndarray, pair_val_fraction: float) -> str:
    """Why the seen users left no validation pair for early stopping, and what would help."""
    where = f"dataset {dataset.name!r}" + (f" ({dataset.path})" if dataset.path is not None else "")
    counts = np.bincount(dataset.comparisons.user, minlength=dataset.n_users)[np.asarray(seen_users, np.int64)]
    most = int(counts.max()) if len(counts) else 0
    if most == 0:
        return f"{where}: no comparisons of seen users ({len(dataset.comparisons)} comparisons, {dataset.n_users} users)"
    if most < 2:
        return (f"{where}: every seen user has at most one comparison, which it keeps for training; validation "
                "pairs (for early stopping) need users with at least 2 comparisons")
    need = int(np.ceil(0.5 / pair_val_fraction)) if pair_val_fraction > 0 else None
    return (f"{where}: no seen-user validation pairs for early stopping (eval.pair_val_fraction = {pair_val_fraction}, "
            f"users have at most {most} comparisons" + (f"; a user needs about {need} for one validation pair" if need
                                                         else "") + "): raise eval.pair_val_fraction")


def write_results(run_dir: pathlib.Path, results: dict) -> dict:
    """Writes results.json (atomically), the mark of a finished run, and returns what it holds.

    A metric that is undefined on this data is NaN in memory; it is written as null and listed
    under "undefined" with the reason (an accuracy of no decided comparison is not 0.0).
    Infinities are faults, and `write_json_atomic` refuses them."""
    results = json.loads(json.dumps(results, default=json_default))
    undefined = {}
    for path in non_finite_paths(results):
        names = [part for part in reversed(path.split(".")) if not part.lstrip("-").isdigit()]
        undefined[path] = next(
            (why for name in names for key, why in metrics.UNDEFINED_BECAUSE.items() if key in name),
            "no data to compute it on",
        )
    results = nan_to_null(results)
    if undefined:
        results["undefined"] = undefined
    write_json_atomic(run_dir / RESULTS_FILE, results)
    return results


def drop_held_out_copies(comparisons: Comparisons, pairs):
    """Warns about repeated comparisons (same user, prompt and item pair) and drops every training
    copy of a seen user's validation or test comparison. Returns (pairs, counts for results.json)."""
    repeated = duplicates.count_repeats(comparisons)
    train, dropped = duplicates.drop_copies(comparisons, pairs.train, np.concatenate([pairs.val, pairs.test]))
    if repeated:
        logging.getLogger(__name__).warning(
            "%d comparisons repeat an earlier one (same user, prompt and item pair); dropped %d training copies "
            "of validation/test comparisons", repeated, dropped)
    return dataclasses.replace(pairs, train=train), {"repeated_comparisons": repeated, "training_copies_dropped": dropped}


def available_accuracy(curve: dict, key: str = "accuracy") -> dict:
    """k -> `curve[k][key]` for the ks that were measured (an unreached k has accuracy None and
    its reason; `evaluate_unseen`)."""
    return {k: r.get(key) for k, r in curve.items() if r.get("accuracy") is not None}


def run(config: RunConfig, run_dir: str | os.PathLike, on_epoch_end=None) -> dict:
    """Trains and evaluates; writes and returns the results dict. One process at a time per
    run directory: a second one is refused (`rundir.RunDirLocked`) while the first works."""
    check_run_config(config)  # before anything is loaded, compiled or written
    distributed.initialize(config.train.distributed)  # before any JAX computation; see train/distributed.py
    # The processes of one multi-process job share the run directory; process 0 holds its lock.
    with rundir.exclusive(run_dir) if distributed.is_primary() else contextlib.nullcontext():
        return _run(config, pathlib.Path(run_dir), on_epoch_end)


def _run(config: RunConfig, run_dir: pathlib.Path, on_epoch_end=None) -> dict:
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(run_dir, config)
    data = load_and_split(config, run_dir)
    rank_selection = None
    if isinstance(config.model, LoReConfig) and config.model.rank_candidates:  # one lore per rank, the best kept
        seconds = {"prepare": time.perf_counter() - t0}
        config, models, trained, rank_selection = train_rank_candidates(config, data, run_dir, on_epoch_end)
    else:
        models = build_models(config, data)
        seconds = {"prepare": time.perf_counter() - t0}
        trained = train_models(config, data, models, run_dir, on_epoch_end)
    seconds["train"] = time.perf_counter() - t0 - sum(seconds.values())
    log.info("trained in %.0f s", seconds["train"])
    data = evaluation_data(data, config)
    seen = evaluate_seen_users(models, trained.best_params, data, len(config.seeds))
    trained.summary["warnings"] = training_warnings(trained.summary, config.train, seen["accuracy"])
    seconds["evaluate_seen"] = time.perf_counter() - t0 - sum(seconds.values())
    unseen = evaluate_unseen_users(models.graphdef, trained.best_params, data, config)
    seconds["evaluate_unseen"] = time.perf_counter() - t0 - sum(seconds.values())
    log.info("unseen users evaluated in %.0f s (scale and gate decided, val and test users scored)", seconds["evaluate_unseen"])
    results = assemble_results(config, data, seen, unseen, trained.summary, models.stage1, t0)
    results["seconds"] = seconds  # where the wall time went: prepare, train, evaluate_seen, evaluate_unseen
    if rank_selection is not None:
        results["rank_selection"] = rank_selection
    if not distributed.is_primary():  # with several processes process 0 writes the model and the results
        distributed.wait_for_all("pluralign.run: written")
        return results
    log.info("seen accuracy %.4f; unseen-test accuracy at k %s; %.0f s", seen["accuracy"],
             {k: round(v, 4) for k, v in unseen["accuracy_at_k"].items()}, results["wall_seconds"])
    write_artifacts(run_dir, config, data, models, trained, unseen, results)
    tracking.log_results(run_dir, results)  # evaluation figures + hyperparameters into <run>/tensorboard/
    distributed.wait_for_all("pluralign.run: written")
    return results


# --- prepare data -------------------------------------------------------------------------


@dataclasses.dataclass
class RunData:
    """A run's dataset, split (`load_and_split`): users into seen / unseen-val / unseen-test,
    seen users' comparisons into train / val / test rows, and those rows as batches."""

    dataset: PreferenceDataset
    comparisons: Comparisons  # the rows `pairs` and the few-shot episodes index
    split: UserSplit
    pairs: PairSplit
    duplicates: dict  # counts of repeated comparisons and dropped training copies, for results.json
    tables: base.Tables | host_tables.HostTables
    train: base.PairBatch
    val: base.PairBatch
    test: base.PairBatch

    @property
    def truth(self) -> dict:
        """What the data's generator knows (synthetic data): groups, ceilings; {} otherwise."""
        return self.dataset.meta.get("truth", {})

    @property
    def user_group(self) -> np.ndarray | None:
        return np.asarray(self.truth["user_group"]) if "user_group" in self.truth else None

    @property
    def dims(self) -> base.Dims:
        return base.Dims(dim=self.dataset.dim, n_users=self.dataset.n_users)


def load_and_split(config: RunConfig, run_dir: pathlib.Path) -> RunData:
    """Loads the dataset (checking a resumed run's data is the same) and splits it; the user
    split goes to split.json."""
    ev = config.eval
    dataset = load_dataset(config.data, config.cache_dir)
    _check_same_data(run_dir, config, dataset.path)
    comparisons = dataset.comparisons
    split = split_users(
        dataset.n_users, seed=ev.split_seed,
        unseen_val_fraction=ev.unseen_val_fraction, unseen_test_fraction=ev.unseen_test_fraction,
    )
    pairs = split_seen_pairs(
        comparisons, split.seen, seed=ev.split_seed,
        val_fraction=ev.pair_val_fraction, test_fraction=ev.pair_test_fraction,
    )
    pairs, repeats = drop_held_out_copies(comparisons, pairs)
    if distributed.is_primary():  # with several processes only process 0 writes files
        write_json_atomic(run_dir / "split.json", split.to_dict())
    if len(pairs.val) == 0:
        raise ValueError(no_validation_pairs(dataset, split.seen, ev.pair_val_fraction))
    tables = make_tables(dataset, config.train.device_table_budget_mb)
    train, val, test = (to_batch(comparisons.take(rows)) for rows in (pairs.train, pairs.val, pairs.test))
    return RunData(dataset=dataset, comparisons=comparisons, split=split, pairs=pairs, duplicates=repeats,
                   tables=tables, train=train, val=val, test=test)


# --- build one model per seed ---------------------------------------------------------------


@dataclasses.dataclass
class Models:
    """The run's model family and its untrained, seed-stacked parameters."""

    cls: type  # the PreferenceModel subclass (MRM-wrapped with train.meta)
    graphdef: nnx.GraphDef
    params: Any  # [n_seeds, ...] leaves
    train_keys: jax.Array  # raw [n_seeds, 2]: each seed's training key
    init_keys: jax.Array  # raw [n_seeds, 2]: each seed's initialisation key (a population stage's BT uses it too)
    stage1: dict | None  # the summary of a stage before comparison training (DPA), for results.json
    context: Any  # the family's `training_context` of the training pairs (VPL, MRM), else None


def build_models(config: RunConfig, data: RunData) -> Models:
    """One model per seed: each seed's key splits into (init, train); parameters initialised,
    then the family's stage before comparison training, if it has one (`prepare_stage`), and
    what it reads besides the batch (`training_context`)."""
    root_keys = jnp.stack([jax.random.PRNGKey(s) for s in config.seeds])  # raw [n_seeds, 2]
    init_keys, train_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 2))(root_keys), 1, 0)
    cls = model_class(config.model.name)
    if config.train.meta:  # MRM: the same model with a meta-learned initial user state
        cls = meta.meta_class(cls, meta.MetaOptions.of(config.train))
    graphdef, params = init_params(cls, config.model, data.dims, init_keys)
    params, stage1 = prepare_stage(cls, config, data, params)
    context = training_context(cls, config, data)
    return Models(cls=cls, graphdef=graphdef, params=params, train_keys=train_keys, init_keys=init_keys, stage1=stage1,
                  context=context)


def prepare_stage(cls: type, config: RunConfig, data: RunData, params):
    """A family with a stage before comparison training (DPA: attribute regression,
    `PreferenceModel.prepare_params`) fits it here, from the items of seen users' training pairs
    only, and sets those parameters in every seed: (params, its summary or None)."""
    c, rows = data.comparisons, data.pairs.train
    train_items = np.unique(np.concatenate([c.a[rows], c.b[rows]]))
    return cls.prepare_params(config.model, data.dataset, train_items, params)  # (params, None) by default


def training_context(cls: type, config: RunConfig, data: RunData) -> Any:
    """The family's `training_context` of the training pairs (VPL, MRM: the comparisons grouped
    by user, read inside the step), which needs the embedding tables on the device; None for most."""
    # Each user's comparisons are put in an order drawn with the seed of the data split
    # (eval.split_seed), so it is fixed across training seeds, as the split is.
    context = cls.training_context(data.train, data.dataset.n_users, seed=config.eval.split_seed)
    if context is not None and isinstance(data.tables, host_tables.HostTables):
        raise ValueError(
            f"model {config.model.name} reads users' other comparisons inside the step and needs the embedding "
            f"tables on the device ({host_tables.table_bytes(data.dataset) / 2**20:.0f} MB > "
            f"train.device_table_budget_mb={config.train.device_table_budget_mb}): raise the budget"
        )
    return context


# --- train every seed in one program ------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """What training leaves for evaluation and the artifact."""

    best_params: Any  # [n_seeds, ...] each seed's parameters at its best validation loss
    best_val_loss: Any  # [n_seeds]
    summary: dict  # the trainer's summary (epochs, best epochs, ...) for results.json


def train_population(config: RunConfig, data: RunData, models: Models, run_dir: pathlib.Path):
    """A population-anchored model's first stage (`PreferenceModel.population_stage`): BT trained
    on the same comparisons with its own early stopping (checkpoints in run_dir/population),
    copied into every seed's shared reward. Returns (params, the state paths to freeze, a summary
    for results.json) — unchanged params, no paths and None for models without a stage, and
    under MRM (`train.meta`, whose wrapped state has another layout)."""
    stage = None if config.train.meta else models.cls.population_stage(config.model)
    if stage is None:
        return models.params, (), None
    # The keys, config, data and trainer of `model=bt` with these seeds: the stage's BT is that run's BT.
    graphdef, params = init_params(BT, stage.config, data.dims, models.init_keys)
    trainer = host_tables.make_trainer(graphdef, config.train, len(data.pairs.train), data.tables)
    log.info("population stage: BT %s on the same %d training pairs, its own early stopping", stage.config.hidden,
             len(data.pairs.train))
    keys = jnp.array(models.train_keys, copy=True)  # the trainer donates its state; the model's own run needs the keys
    (run_dir / "population").mkdir(parents=True, exist_ok=True)
    state, summary = trainer.fit(trainer.init_state(params, keys), data.tables, data.train, data.val,
                                 run_dir=run_dir / "population", hparams={"population_stage": dataclasses.asdict(stage.config)})
    target = models.params
    for key in stage.path:
        target = target[key]
    for name in ("reward_net", "null_prompt"):
        target[name] = state.best_params[name]
    record = {"model": dataclasses.asdict(stage.config), "epochs_run": summary["epochs_run"],
              "best_epoch": summary["best_epoch"], "best_val_loss": np.asarray(state.best_val_loss).tolist()}
    return models.params, stage.frozen, record


def train_models(config: RunConfig, data: RunData, models: Models, run_dir: pathlib.Path, on_epoch_end=None,
                 population_dir: pathlib.Path | None = None) -> Trained:
    """Trains every seed in one vmapped program, early stopping on seen-user validation loss,
    with checkpoints and resume in run_dir; a population-anchored model's shared reward first, as
    BT (`train_population`, in population_dir/population; default run_dir), then frozen."""
    params, frozen, population = train_population(config, data, models, population_dir or run_dir)
    models = dataclasses.replace(models, params=params)
    trainer = host_tables.make_trainer(models.graphdef, config.train, len(data.pairs.train), data.tables, frozen)
    log.info("%s on %s: %d users (%d seen), %d training pairs; seeds %s, batch %d, %d steps per epoch", config.model.name,
             data.dataset.name, data.dataset.n_users, len(data.split.seen), len(data.pairs.train), list(config.seeds),
             trainer.batch_size, trainer.steps_per_epoch)
    state, summary = trainer.fit(
        trainer.init_state(models.params, models.train_keys), data.tables, data.train, data.val, run_dir=run_dir,
        on_epoch_end=on_epoch_end, hparams=_fingerprint(config), context=models.context,
    )
    if population is not None:
        summary["population_stage"] = population
    return Trained(best_params=state.best_params, best_val_loss=state.best_val_loss, summary=summary)


def train_rank_candidates(config: RunConfig, data: RunData, run_dir: pathlib.Path, on_epoch_end=None):
    """lore's rank chosen on held-out likelihood (`model.rank_candidates`): one model per candidate
    rank, built and trained as the run would (`build_models`, `train_models`) in run_dir/rank_<r>
    with its own checkpoints; the population stage is the run's one (run_dir/population: trained
    once, and restored from its finished checkpoint by later candidates, or retrained where
    train.checkpoint is off). Keeps the rank with the lowest seen-user validation loss (the
    trainer's `best_val_loss`, mean over seeds; never test pairs or unseen users).
    Returns (the config with the chosen rank, its Models, its Trained, the evidence for results.json)."""
    losses, best = {}, None
    for rank in config.model.rank_candidates:
        candidate = dataclasses.replace(config, model=dataclasses.replace(config.model, rank=rank))
        log.info("rank candidate %d of %s", rank, list(config.model.rank_candidates))
        models = build_models(candidate, data)
        (run_dir / f"rank_{rank}").mkdir(parents=True, exist_ok=True)
        trained = train_models(candidate, data, models, run_dir / f"rank_{rank}", on_epoch_end, population_dir=run_dir)
        losses[rank] = float(np.mean(np.asarray(trained.best_val_loss)))
        if best is None or losses[rank] < losses[best[0].model.rank]:
            best = (candidate, models, trained)
    chosen = best[0].model.rank
    log.info("rank chosen on seen users' validation loss: %d (%s)", chosen,
             ", ".join(f"rank {r}: {v:.4f}" for r, v in losses.items()))
    return (*best, {"candidates": losses, "chosen": chosen})


def evaluation_data(data: RunData, config: RunConfig) -> RunData:
    """With tables on the host (`HostTables`), evaluation reads only the rows it needs, placed
    on the device (comparisons renumbered into them); device tables are used as they are."""
    if not isinstance(data.tables, host_tables.HostTables):
        return data
    unseen = np.concatenate([data.split.unseen_val, data.split.unseen_test])
    eval_rows = np.concatenate([calibration_rows(data), np.flatnonzero(np.isin(data.comparisons.user, unseen))])
    if config.eval.calibration_support != "held_out":  # the calibration users' training pairs: their support
        users = shrinkage.calibration_users(data.comparisons, calibration_rows(data), max_seen=config.eval.calibration_seen_users)
        train = np.asarray(data.pairs.train, np.int64)
        eval_rows = np.concatenate([eval_rows, train[np.isin(data.comparisons.user[train], users)]])
    tables, comparisons = host_tables.restrict(data.tables, data.comparisons, eval_rows)
    return dataclasses.replace(data, tables=tables, comparisons=comparisons, test=to_batch(comparisons.take(data.pairs.test)))


# --- evaluate seen users: held-out pairs ----------------------------------------------------


def evaluate_seen_users(models: Models, params, data: RunData, n_seeds: int) -> dict:
    """results.json `seen`: seen users' held-out test pairs under each seed (`per_seed`), the
    figures averaged over seeds, and the histogram of each user's accuracy (averaged over seeds)."""
    seen_logits = jax.jit(lambda p, tables, batch, context: predict_seen(models.graphdef, p, tables, batch, context=context))
    test = data.comparisons.take(data.pairs.test)
    logits = [np.asarray(seen_logits(jax.tree.map(lambda x: x[i], params), data.tables, data.test, models.context))
              for i in range(n_seeds)]
    runs = [metrics.summary(z, test.label, test.weight, test.user, data.user_group) for z in logits]
    over = metrics.mean_over_runs(runs)
    worst_group = over.pop("worst_group_accuracy", None)
    seen = {**over, "n_pairs": runs[0]["n_pairs"], "per_seed": runs}
    if worst_group is not None:
        seen["worst_group_accuracy"] = worst_group
    per_user = np.mean([metrics.per_user_accuracy(z, test.label, test.weight, test.user) for z in logits], axis=0)
    seen["per_user_histogram"] = per_user_histogram(per_user)
    return seen


def per_user_histogram(per_user: np.ndarray) -> dict:
    """Distribution of per-user accuracy as a 20-bin histogram on [0, 1]: compact at any number
    of users; `pluralign report` plots it."""
    counts, edges = np.histogram(per_user, bins=20, range=(0.0, 1.0))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


# --- evaluate unseen users: shrinkage decided on calibration users, reported on unseen-test --


def residual_ratio_of(decisions: dict) -> float:
    """A mode's residual ratio ρ (one per mode, on every decision; 1.0 where nothing was decided)."""
    return float(next(iter(decisions.values())).residual_ratio) if decisions else 1.0


def calibration_rows(data: RunData) -> np.ndarray:
    """Seen users' held-out comparisons (the seen-pair validation and test rows, never trained
    on): with unseen-val users, the calibration users of `pluralign.evaluate.shrinkage`."""
    return np.sort(np.concatenate([data.pairs.val, data.pairs.test]))


def calibration_support(config: RunConfig, model) -> str:
    """eval.calibration_support with "auto" resolved: "held_out" for a model whose inference is an
    encoder trained on the seen users' training pairs (`amortized_inference`: VPL), "training" for
    the others. Measured on rail (VPL, 3 user splits): with training support the calibration users
    gained +0.041 in log-loss at k = 2 where the unseen-test users lost 0.040, and the gate opened;
    with held-out support it stayed shut, and Swissmetro and `shared_plus_low_rank` kept their gains."""
    if config.eval.calibration_support != "auto":
        return config.eval.calibration_support
    return "held_out" if model.amortized_inference else "training"


def unseen_episodes(data: RunData, config: RunConfig, mode: str) -> dict[str, tuple[list, list[int]]]:
    """`fewshot.scored_episodes` of the unseen-val and unseen-test users (those there are) in `mode`:
    their episodes and the k's they will be scored at, eval.shots plus the largest k enough of them
    reach where the largest asked for is out of their reach. The shrinkage is decided at each of
    those k's, so a k is never scored under the decision made for another (rail: unseen-test users
    reach k = 7 of 9, which took k = 6's); `fewshot.evaluate_unseen` then scores these episodes."""
    ev = config.eval
    return {name: fewshot.scored_episodes(data.comparisons, np.asarray(users), shots=list(ev.shots), mode=mode,
                                          seeds=list(config.seeds), draws=ev.draws, min_user_fraction=ev.min_user_fraction)
            for name, users in (("unseen_val", data.split.unseen_val), ("unseen_test", data.split.unseen_test)) if len(users)}


def evaluate_unseen_users(graphdef, params, data: RunData, config: RunConfig) -> dict:
    """results.json `unseen`: in each split mode the prior's scale and the personalization gate
    are decided at each k on the calibration users (`shrinkage.calibrate`: seen users' held-out
    comparisons and unseen-val users), unseen-val users are scored with them (a confirmation) and
    unseen-test users give the figures; the primary mode (random where measured) the headline."""
    ev, split = config.eval, data.split
    adapt = fewshot.make_adapt_and_predict(graphdef, ev.inference_steps, ev.inference_learning_rate, ev.inference)
    common = dict(
        shots=list(ev.shots), seeds=list(config.seeds), draws=ev.draws, min_user_fraction=ev.min_user_fraction,
        seen_users=jnp.asarray(split.seen), user_group=data.user_group,
    )
    first_model = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params))
    if ev.inference == "bayes":
        warn_if_degenerate_seen_states(first_model, jnp.asarray(split.seen))
    settings = shrinkage.grid(first_model, ev.inference, ev.prior_scales, ev.prior_strengths)
    personal = first_model.user_state_dim > 0
    has_block = ev.inference == "bayes" and first_model.fits_user_state and first_model.residual_block() is not None
    support = calibration_support(config, first_model)
    ratio = (ev.residual_ratio if has_block else 1.0)  # None: fitted per mode (shrinkage.search_ratio)
    by_mode, decisions, val_curves, warnings = {}, {}, {}, []
    for mode in ev.modes:
        t0 = time.perf_counter()
        episodes = unseen_episodes(data, config, mode)
        shots = sorted(set(ev.shots).union(*(ks for _, ks in episodes.values())))
        if personal:
            log.info("%s: deciding the prior's scale and the gate at k %s on a grid of %d settings, scored near its "
                     "minimum (calibration users: seen users, support from their %s pairs, query their held-out pairs; "
                     "and %d unseen-val users)", mode,
                     shots, len(settings), support.replace("_", "-"), len(split.unseen_val))
        decisions[mode] = shrinkage.calibrate(
            adapt, params, data.tables, data.comparisons, held_out_rows=calibration_rows(data),
            val_users=split.unseen_val, seen_users=jnp.asarray(split.seen), shots=shots, mode=mode,
            seeds=list(config.seeds), settings=settings, gate=ev.gate, min_users=ev.gate_min_users, level=ev.gate_level,
            accuracy_margin=ev.gate_accuracy_margin,
            max_seen=ev.calibration_seen_users, scale_by_k=ev.scale_by_k,
            train_rows=data.pairs.train if support == "training" else None, residual_ratio=ratio,
        ) if personal else {}
        if personal and not decisions[mode]:
            warnings.append(f"{mode}: no calibration user (seen users' held-out pairs, unseen-val users) reaches "
                            f"k={min(ev.shots)} with a query: nothing decides the prior's scale or the gate, so every "
                            f"new user gets the population prediction; hold out more pairs (eval.pair_val_fraction, "
                            f"eval.pair_test_fraction) or users (eval.unseen_val_fraction), or ask for smaller eval.shots")
            log.warning(warnings[-1])
        if decisions[mode]:
            log.info("%s: shrinkage decided in %.0f s: %s", mode, time.perf_counter() - t0, "; ".join(
                f"k={k} {'personalize' if d.personalize else 'population'} (scale {d.prior_scale:.3g}"
                f"{'' if d.scale_from == 'this k' else ' pooled over k'}, "
                f"log-loss gain {d.gain_log_loss:+.4f}, {sum(d.n_users.values())} users)" for k, d in decisions[mode].items()))
            if has_block:
                first = next(iter(decisions[mode].values()))
                log.info("%s: residual ratio %g%s", mode, first.residual_ratio, "" if first.residual_ratio_log_loss is None else
                         " (pooled log-loss " + ", ".join(f"ρ={r}: {v:.4f}" for r, v in first.residual_ratio_log_loss.items()) + ")")
        chosen = dict(prior_strength={k: d.prior_scale for k, d in decisions[mode].items()} or settings[0],
                      personalize={k: d.personalize for k, d in decisions[mode].items()} if personal else None,
                      residual_ratio=residual_ratio_of(decisions[mode]))
        t0 = time.perf_counter()
        val_curves[mode] = fewshot.evaluate_unseen(adapt, params, data.tables, data.comparisons, split.unseen_val,
                                                   mode=mode, scored=episodes.get("unseen_val"), **chosen, **common)
        by_mode[mode] = fewshot.evaluate_unseen(adapt, params, data.tables, data.comparisons, split.unseen_test,
                                                mode=mode, scored=episodes.get("unseen_test"), **chosen, **common)
        log.info("%s: %d unseen-val and %d unseen-test users scored at k %s in %.0f s", mode, len(split.unseen_val),
                 len(split.unseen_test), shots, time.perf_counter() - t0)
    primary_mode = "random" if "random" in by_mode else next(iter(by_mode))
    primary = by_mode[primary_mode]
    strengths_by_k = {m: {k: d.prior_scale for k, d in ds.items()} for m, ds in decisions.items()}
    ratios = {m: residual_ratio_of(ds) for m, ds in decisions.items()}
    overall = {m: (float(np.exp(np.mean(np.log(list(by_k.values()))))) if by_k else settings[0])
               for m, by_k in strengths_by_k.items()}  # a summary only: inference uses the per-k settings
    return {
        "mode": primary_mode,
        "accuracy_at_k": available_accuracy(primary),
        "accuracy_std_at_k": available_accuracy(primary, "accuracy_std"),
        "inference": ev.inference,
        "prior_strength": overall[primary_mode],
        "prior_strength_by_mode": overall,
        "prior_strength_by_k": strengths_by_k,  # the fitted setting at each k (on the calibration users)
        "personalize_by_k": {m: {k: d.personalize for k, d in ds.items()} for m, ds in decisions.items()},
        "residual_ratio_by_mode": ratios,  # ρ of the prior's residual block (1: none, or not fitted)
        "calibration_support": support,  # eval.calibration_support, "auto" resolved for this model
        "shrinkage": {m: {k: d.to_dict() for k, d in ds.items()} for m, ds in decisions.items()},
        "prior_grid": settings,  # one value where inference ignores the prior (BT, VPL)
        "val_accuracy_at_k": available_accuracy(val_curves[primary_mode]),
        "val_by_mode": {m: {k: {n: e.get(n) for n in ("accuracy", "log_loss", "n_users", "ci95")}
                            for k, e in curve.items()} for m, curve in val_curves.items()},
        "by_mode": by_mode,
        "warnings": warnings,
    }


# --- record ---------------------------------------------------------------------------------


def assemble_results(config: RunConfig, data: RunData, seen: dict, unseen: dict, train_summary: dict,
                     stage1: dict | None, t0: float) -> dict:
    """The results.json dict."""
    truth, split, pairs = data.truth, data.split, data.pairs
    return {
        "status": "complete",
        "model": config.model.name,
        "dataset": data.dataset.name,
        "seeds": list(config.seeds),
        "seen": seen,
        "unseen": unseen,
        "bayes_optimal_accuracy": truth.get("bayes_optimal_accuracy"),
        "population_optimal_accuracy": truth.get("population_optimal_accuracy"),
        "n_users": {"seen": len(split.seen), "unseen_val": len(split.unseen_val), "unseen_test": len(split.unseen_test)},
        "warnings": split_warnings({"unseen_val": len(split.unseen_val), "unseen_test": len(split.unseen_test)})
        + unseen.get("warnings", []),
        "n_pairs": {"train": len(pairs.train), "val": len(pairs.val), "test": len(pairs.test)},
        "duplicates": data.duplicates,
        "train": train_summary,
        **({"stage1": stage1} if stage1 is not None else {}),
        "wall_seconds": time.perf_counter() - t0,
        "config": dataclasses.asdict(config),
        "provenance": provenance(),
    }


# --- export -----------------------------------------------------------------------------------


def write_artifacts(run_dir: pathlib.Path, config: RunConfig, data: RunData, models: Models, trained: Trained,
                    unseen: dict, results: dict) -> None:
    """The trained model as one loadable directory (`pluralign.load(run_dir)`; see
    pluralign.export), then results.json: a complete results.json is the mark of a finished run."""
    from pluralign.export.artifact import MODEL_DIR, compute_seen_states, save_model

    ev = config.eval
    save_model(
        run_dir / MODEL_DIR, model_config=config.model, dims=data.dims, params=trained.best_params,
        seen_states=compute_seen_states(models.graphdef, trained.best_params, data.tables, data.dataset.n_users,
                                        context=models.context),
        seeds=list(config.seeds), dataset_meta=data.dataset.meta, seen_users=data.split.seen, split=data.split.to_dict(),
        best_val_loss=trained.best_val_loss, prior_strength=unseen["prior_strength"],
        prior_strength_by_k=unseen["prior_strength_by_k"], prior_strength_by_mode=unseen["prior_strength_by_mode"],
        personalize_by_k=unseen["personalize_by_k"], residual_ratio_by_mode=unseen.get("residual_ratio_by_mode"),
        prior_mode=unseen["mode"], inference=ev.inference,
        inference_steps=ev.inference_steps, inference_learning_rate=ev.inference_learning_rate,
        data_config=config.data, meta_options=meta.MetaOptions.of(config.train) if config.train.meta else None,
    )
    rundir.fault_point("after_model")
    write_results(run_dir, results)


def warn_if_degenerate_seen_states(model: base.PreferenceModel, seen_users: jax.Array, ratio: float = 1e-3) -> None:
    """Logs a warning where the seen users' states barely vary in most directions (e.g. collapsed
    PAL prototypes): the empirical-Bayes prior then pins new users to the population there."""
    if not model.fits_user_state or seen_users.shape[0] == 0:
        return
    eigenvalues = np.asarray(base.empirical_prior(model, seen_users).sample_eigenvalues)
    top = float(eigenvalues.max())
    flat = int(np.sum(eigenvalues <= max(ratio * top, 1e-6)))  # 1e-6: a std of 0.001 is no spread at any scale
    if flat > eigenvalues.size // 2:
        log.warning(
            "seen users' %d-dim states are degenerate: %d of %d directions have variance below %.0e of the largest "
            "(%.3g); the fitted few-shot prior keeps new users near the population in those directions",
            eigenvalues.size, flat, eigenvalues.size, ratio, top,
        )
