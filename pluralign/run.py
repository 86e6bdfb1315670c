"""One training-and-evaluation run, from typed configs to `results.json`.

This is the library's "train.py": read linearly, it is the whole protocol. Hydra
stays in `pluralign.cli`; everything here takes dataclasses.

  1. load the dataset (generating and caching synthetic data), split users into
     seen / unseen-val / unseen-test and seen users' pairs into train / val / test;
  2. build one model per seed and train them all in one vmapped program, early
     stopping on seen-user validation loss, with checkpoints and resume;
  3. evaluate: seen users on held-out pairs; unseen users k-shot with θ frozen, the
     prior strength for few-shot inference chosen on unseen-val users only;
  4. write `results.json` (atomically) into the run directory.
"""

from __future__ import annotations

import dataclasses
import functools
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

from pluralign.data import Comparisons, split_seen_pairs, split_users
from pluralign.data import duplicates
from pluralign.data.sources import load_dataset
from pluralign.evaluate import fewshot, metrics
from pluralign.jsonio import flatten as _flatten, json_default, write_json_atomic
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import base, model_class
from pluralign.train import meta
from pluralign.train.trainer import Trainer, TrainConfig, init_params, predict_seen

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


def to_batch(comparisons: Comparisons) -> base.PairBatch:
    return base.PairBatch(
        user=jnp.asarray(comparisons.user), prompt=jnp.asarray(comparisons.prompt),
        a=jnp.asarray(comparisons.a), b=jnp.asarray(comparisons.b),
        label=jnp.asarray(comparisons.label), weight=jnp.asarray(comparisons.weight),
    )


def make_tables(dataset) -> base.Tables:
    items = jnp.asarray(dataset.items)
    prompts = jnp.asarray(dataset.prompts) if dataset.prompts is not None else jnp.zeros((1, dataset.dim), items.dtype)
    return base.Tables(items=items, prompts=prompts)


def _fingerprint(config: RunConfig) -> dict:
    """The parts of a config that determine a run's result (not progress bars or cache paths)."""
    d = json.loads(json.dumps(dataclasses.asdict(config), default=json_default))
    d.pop("cache_dir", None)
    d["train"].pop("progress", None)
    return d


def _check_resumable(run_dir: pathlib.Path, config: RunConfig) -> None:
    """A run directory with checkpoints resumes only the same config; otherwise fail clearly."""
    path = run_dir / "run_config.json"
    if path.exists() and (run_dir / "checkpoints").exists():
        old, new = json.loads(path.read_text()), _fingerprint(config)
        if old != new:
            flat_old, flat_new = _flatten(old), _flatten(new)
            diff = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
            raise ValueError(
                f"{run_dir}: holds checkpoints of a run with a different config (differs in: {', '.join(diff)}). "
                "Resume only with the same config; start a changed config in a new run directory."
            )
    write_json_atomic(path, _fingerprint(config))


def finished_results(run_dir: str | os.PathLike, config: RunConfig) -> dict | None:
    """The results of `run_dir` if it holds a complete run of this same config, else None.

    Lets a re-run sweep skip the jobs that finished and redo only missing or failed ones
    (a failed job has no complete results.json and resumes from its checkpoint).
    """
    run_dir = pathlib.Path(run_dir)
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        same_config = json.loads((run_dir / "run_config.json").read_text()) == _fingerprint(config)
    except (OSError, ValueError):
        return None
    return results if results.get("status") == "complete" and same_config else None


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
    """k -> curve[k][key] for the ks that were measured (an unreached k has accuracy None and
    its reason; `evaluate_unseen`)."""
    return {k: r.get(key) for k, r in curve.items() if r.get("accuracy") is not None}


def run(config: RunConfig, run_dir: str | os.PathLike, on_epoch_end=None) -> dict:
    """Trains and evaluates; writes and returns the results dict."""
    t0 = time.perf_counter()
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ev = config.eval
    seeds = list(config.seeds)

    _check_resumable(run_dir, config)

    dataset = load_dataset(config.data, config.cache_dir)
    comparisons = dataset.comparisons
    truth = dataset.meta.get("truth", {})
    user_group = np.asarray(truth["user_group"]) if "user_group" in truth else None
    split = split_users(
        dataset.n_users, seed=ev.split_seed,
        unseen_val_fraction=ev.unseen_val_fraction, unseen_test_fraction=ev.unseen_test_fraction,
    )
    pairs = split_seen_pairs(
        comparisons, split.seen, seed=ev.split_seed,
        val_fraction=ev.pair_val_fraction, test_fraction=ev.pair_test_fraction,
    )
    pairs, repeats = drop_held_out_copies(comparisons, pairs)
    write_json_atomic(run_dir / "split.json", split.to_dict())
    if len(pairs.val) == 0:
        raise ValueError("no seen-user validation pairs for early stopping: raise eval.pair_val_fraction")
    tables = make_tables(dataset)
    train, val, test = (to_batch(comparisons.take(rows)) for rows in (pairs.train, pairs.val, pairs.test))

    # --- train every seed in one program
    root_keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])  # raw [n_seeds, 2]
    init_keys, train_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 2))(root_keys), 1, 0)
    cls = model_class(config.model.name)
    if config.train.meta:  # MRM: the same model with a meta-learned initial user state
        cls = meta.meta_class(cls, meta.MetaOptions.of(config.train))
    graphdef, params = init_params(cls, config.model, base.Dims(dim=dataset.dim, n_users=dataset.n_users), init_keys)
    # A family with a stage before comparison training (DPA: attribute regression) fits it here,
    # from the items of seen users' training pairs only, and sets those parameters in every seed.
    prepare, stage1 = getattr(cls, "prepare_params", None), None
    if prepare is not None:
        train_items = np.unique(np.concatenate([comparisons.a[pairs.train], comparisons.b[pairs.train]]))
        params, stage1 = prepare(config.model, dataset, train_items, params)
    if cls.needs_context:  # e.g. VPL: each comparison's context comes from its user's other training pairs
        train = train.replace(row=jnp.arange(len(pairs.train), dtype=jnp.int32))
        tables = tables.replace(context=base.user_context(train, dataset.n_users, seed=ev.split_seed))
    trainer = Trainer(graphdef, config.train, n_train=len(pairs.train))
    state, train_summary = trainer.fit(
        trainer.init_state(params, train_keys), tables, train, val, run_dir=run_dir, on_epoch_end=on_epoch_end
    )
    best = state.best_params

    # --- seen users: held-out pairs
    seen_logits = jax.jit(functools.partial(predict_seen, graphdef))
    test_np = comparisons.take(pairs.test)
    test_logits = [np.asarray(seen_logits(jax.tree.map(lambda x: x[i], best), tables, test)) for i in range(len(seeds))]
    seen_runs = [
        metrics.summary(logits, test_np.label, test_np.weight, test_np.user, user_group) for logits in test_logits
    ]
    over_seeds = lambda get: float(np.mean([get(r) for r in seen_runs]))
    seen = {
        "accuracy": over_seeds(lambda r: r["accuracy"]),
        "accuracy_std": float(np.std([r["accuracy"] for r in seen_runs])),
        "log_loss": over_seeds(lambda r: r["log_loss"]),
        "ece": over_seeds(lambda r: r["ece"]),
        "per_user_mean": over_seeds(lambda r: r["per_user"]["mean"]),
        "per_user_p10": over_seeds(lambda r: r["per_user"]["p10"]),
        "n_pairs": seen_runs[0]["n_pairs"],
        "per_seed": seen_runs,
    }
    if user_group is not None:
        seen["worst_group_accuracy"] = over_seeds(lambda r: r["worst_group_accuracy"])
    # Distribution of per-user accuracy (each seen user's test pairs, averaged over seeds) as a
    # 20-bin histogram on [0, 1]: compact at any number of users; `pluralign report` plots it.
    per_user = np.mean([
        metrics.per_user_accuracy(logits, test_np.label, test_np.weight, test_np.user) for logits in test_logits
    ], axis=0)
    counts, edges = np.histogram(per_user, bins=20, range=(0.0, 1.0))
    seen["per_user_histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}

    # --- unseen users: prior chosen on unseen-val users in each split mode, reported on unseen-test
    adapt = fewshot.make_adapt_and_predict(graphdef, ev.inference_steps, ev.inference_learning_rate, ev.inference)
    common = dict(
        shots=list(ev.shots), seeds=seeds, draws=ev.draws, min_user_fraction=ev.min_user_fraction,
        seen_users=jnp.asarray(split.seen), user_group=user_group,
    )
    first_model = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], best))
    if ev.inference == "bayes":
        warn_if_degenerate_seen_states(first_model, jnp.asarray(split.seen))
    by_mode, strengths, strengths_by_k, val_curves = {}, {}, {}, {}
    for mode in ev.modes:
        curves = prior_curves(adapt, best, tables, comparisons, split.unseen_val, first_model, ev, mode, common)
        strengths[mode] = choose_prior(curves)
        val_curves[mode] = curves[strengths[mode]]
        strengths_by_k[mode] = choose_prior_by_k(curves)
        by_mode[mode] = fewshot.evaluate_unseen(
            adapt, best, tables, comparisons, split.unseen_test, mode=mode,
            prior_strength=strengths_by_k[mode] or strengths[mode], **common
        )
    primary_mode = "random" if "random" in by_mode else next(iter(by_mode))
    primary, strength = by_mode[primary_mode], strengths[primary_mode]
    unseen = {
        "mode": primary_mode,
        "accuracy_at_k": available_accuracy(primary),
        "accuracy_std_at_k": available_accuracy(primary, "accuracy_std"),
        "inference": ev.inference,
        "prior_strength": strength,
        "prior_strength_by_mode": strengths,
        "prior_strength_by_k": strengths_by_k,  # the setting used at each k (chosen on unseen-val at that k)
        "val_accuracy_at_k": available_accuracy(val_curves[primary_mode]),
        "by_mode": by_mode,
    }

    results = {
        "status": "complete",
        "model": config.model.name,
        "dataset": dataset.name,
        "seeds": seeds,
        "seen": seen,
        "unseen": unseen,
        "bayes_optimal_accuracy": truth.get("bayes_optimal_accuracy"),
        "population_optimal_accuracy": truth.get("population_optimal_accuracy"),
        "n_users": {"seen": len(split.seen), "unseen_val": len(split.unseen_val), "unseen_test": len(split.unseen_test)},
        "n_pairs": {"train": len(pairs.train), "val": len(pairs.val), "test": len(pairs.test)},
        "duplicates": repeats,
        "train": train_summary,
        **({"stage1": stage1} if stage1 is not None else {}),
        "wall_seconds": time.perf_counter() - t0,
        "config": dataclasses.asdict(config),
    }
    write_json_atomic(run_dir / RESULTS_FILE, results)
    # The trained model as one loadable directory (`pluralign.load(run_dir)`); see pluralign.export.
    from pluralign.export.artifact import MODEL_DIR, compute_seen_states, save_model

    save_model(
        run_dir / MODEL_DIR, model_config=config.model, dims=base.Dims(dim=dataset.dim, n_users=dataset.n_users),
        params=best, seen_states=compute_seen_states(graphdef, best, tables, dataset.n_users), seeds=seeds,
        dataset_meta=dataset.meta, seen_users=split.seen, split=split.to_dict(), best_val_loss=state.best_val_loss,
        prior_strength=strength, inference=ev.inference, inference_steps=ev.inference_steps, inference_learning_rate=ev.inference_learning_rate,
        data_config=config.data, meta_options=meta.MetaOptions.of(config.train) if config.train.meta else None,
    )
    return results


def prior_candidates(model: base.PreferenceModel, ev: EvalConfig) -> list[float]:
    """The few-shot prior settings to choose among: multipliers of the fitted prior precision
    (`eval.inference=bayes`) or isotropic strengths (`map`); one where inference ignores it."""
    if model.user_state_dim == 0 or not model.uses_prior_strength:
        return [ev.prior_scales[0] if ev.inference == "bayes" else ev.prior_strengths[0]]
    return list(ev.prior_scales if ev.inference == "bayes" else ev.prior_strengths)


def select_prior(adapt, params, tables, comparisons, val_users, model, ev: EvalConfig, mode: str, common: dict):
    """Chooses the prior setting on unseen-val users under the split `mode` it will be reported in
    (highest mean accuracy over k, then lowest mean log-loss): (setting, its val curve)."""
    curves = prior_curves(adapt, params, tables, comparisons, val_users, model, ev, mode, common)
    value = choose_prior(curves)
    return value, curves[value]


def prior_curves(adapt, params, tables, comparisons, val_users, model, ev: EvalConfig, mode: str, common: dict) -> dict:
    """Every candidate prior setting's k-shot curve on unseen-val users under `mode`: {setting: curve}."""
    return {
        value: fewshot.evaluate_unseen(adapt, params, tables, comparisons, val_users, mode=mode, prior_strength=value, **common)
        for value in prior_candidates(model, ev)
    }


def choose_prior(curves: dict) -> float:
    """The setting with the highest mean val accuracy over the measured ks, then the lowest mean log-loss."""
    if not any(available_accuracy(curve) for curve in curves.values()):
        # no unseen-val user reaches any k (e.g. a tiny dataset): nothing to select on
        return next(iter(curves))

    def score(value):
        accuracy = list(available_accuracy(curves[value]).values())
        log_loss = list(available_accuracy(curves[value], "log_loss").values())
        return (np.mean(accuracy or [-1.0]), -np.mean(log_loss or [np.inf]))

    return max(curves, key=score)


def choose_prior_by_k(curves: dict) -> dict[int, float]:
    """For each k the val users reach, the setting with the highest val accuracy at that k (then
    the lowest log-loss). How far to trust k answers depends on k: one answer may not beat the
    population prediction while twenty do, and the largest candidate scale (which pins a user to
    the population state) lets the model fall back to the population at the ks where adapting
    did not pay on val users. {} where no val user reaches any k."""
    chosen = {}
    for k in sorted({k for curve in curves.values() for k in available_accuracy(curve)}):
        measured = {v: c[k] for v, c in curves.items() if c.get(k, {}).get("accuracy") is not None}
        chosen[k] = max(measured, key=lambda v: (measured[v]["accuracy"], -measured[v]["log_loss"]))
    return chosen


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
