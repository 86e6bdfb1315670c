"""Empirical-Bayes few-shot inference vs MAP, each with its prior's scale fitted on calibration users.

    PYTHONPATH=. python experiments/eb_vs_map.py [--models pal_a lore] [--data ideal_point hidden_types]

Trains each (model, data) once with `run.run` (default data sizes, seed 0), then scores the
same trained parameters on the same unseen-test users both ways, the prior's scale and the gate
decided on the calibration users in the same split mode at each k (as `pluralign.run` does,
`pluralign.evaluate.shrinkage`): `bayes` (prior fitted to the seen users' states,
Laplace posterior, posterior-predictive probabilities; precision multiplier from
`eval.prior_scales`) and `map` (isotropic prior, strength from `eval.prior_strengths`).
Prints accuracy and log-loss at k = 1, 2, 5, 20 in both modes.
Runtime: about 3 minutes per (model, data) on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import json
import dataclasses
import pathlib
import tempfile

import jax.numpy as jnp
import numpy as np

import pluralign
from pluralign.config import model_config
from pluralign.data.hidden_types import HiddenTypesConfig
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate import fewshot
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.data import split_seen_pairs
from pluralign.evaluate import shrinkage
from pluralign.run import RunConfig, run
from pluralign.train.batches import make_tables
from pluralign.train.trainer import TrainConfig

DATA = {"ideal_point": IdealPointConfig(), "hidden_types": HiddenTypesConfig()}
SHOTS = [1, 2, 5, 20]


def compare(model: str, data: str, root: pathlib.Path, seeds: list[int]) -> dict:
    ev = EvalConfig(shots=SHOTS, modes=["random", "item_disjoint"], draws=2, inference="map")
    config = RunConfig(model=model_config(model), data=DATA[data], train=TrainConfig(progress=False, checkpoint=False),
                       eval=ev, seeds=seeds, cache_dir=str(root / "cache"))
    results = run(config, root / f"{model}-{data}")
    return score(root / f"{model}-{data}", str(root / "cache"), ev, seeds, results["seen"]["accuracy"])


def score(run_dir: pathlib.Path, cache_dir: str, ev: EvalConfig, seeds: list[int], seen_accuracy: float) -> dict:
    """Scores one trained run's parameters on its unseen-test users both ways (scale and gate decided
    on the calibration users: seen users' held-out pairs, as the run split them, and unseen-val users)."""
    trained = pluralign.load(run_dir)
    dataset = trained.load_dataset(cache_dir)
    tables = make_tables(dataset)
    users = trained.users
    val = np.flatnonzero(users["split"] == "unseen_val")
    test = np.flatnonzero(users["split"] == "unseen_test")
    common = dict(shots=ev.shots, seeds=seeds, draws=ev.draws, min_user_fraction=ev.min_user_fraction,
                  seen_users=jnp.asarray(trained.seen_users), user_group=None)
    model_obj = trained.model
    pairs = split_seen_pairs(dataset.comparisons, trained.seen_users, seed=ev.split_seed, val_fraction=ev.pair_val_fraction,
                             test_fraction=ev.pair_test_fraction)
    held_out = np.sort(np.concatenate([pairs.val, pairs.test]))
    out = {"map": {}, "bayes": {}, "seen_accuracy": seen_accuracy}
    for inference in ("map", "bayes"):
        e = dataclasses.replace(ev, inference=inference)
        adapt = fewshot.make_adapt_and_predict(trained.graphdef, e.inference_steps, e.inference_learning_rate, inference)
        for mode in ev.modes:
            # as `pluralign.run`: the scale and the gate decided on the calibration users at each k
            decisions = shrinkage.calibrate(
                adapt, trained.all_params, tables, dataset.comparisons, held_out_rows=held_out, val_users=val,
                seen_users=jnp.asarray(trained.seen_users), shots=ev.shots, mode=mode, seeds=seeds,
                settings=shrinkage.grid(model_obj, inference, e.prior_scales, e.prior_strengths), gate=e.gate,
                min_users=e.gate_min_users, level=e.gate_level, max_seen=e.calibration_seen_users)
            by_k = {k: d.prior_scale for k, d in decisions.items()}
            curve = fewshot.evaluate_unseen(adapt, trained.all_params, tables, dataset.comparisons, test, mode=mode,
                                            prior_strength=by_k or e.prior_scales[0],
                                            personalize={k: d.personalize for k, d in decisions.items()}, **common)
            out[inference][mode] = {"prior": {k: (f"{d.prior_scale:.3g}" if d.personalize else "population")
                                              for k, d in decisions.items()}, "curve": curve}
    return out


def print_comparison(name: str, r: dict, shots: list[int]) -> None:
    print(f"\n{name} (seen accuracy {r['seen_accuracy']:.4f})")
    for mode in r["map"]:
        for inference in ("map", "bayes"):
            m = r[inference][mode]
            cells = "  ".join(
                f"k={k}: {m['curve'][k]['accuracy']:.4f}/{m['curve'][k]['log_loss']:.4f}"
                for k in shots if k in m["curve"] and m["curve"][k]["accuracy"] is not None
            )
            prior = m["prior"]
            prior = ", ".join(f"k={k}: {v}" for k, v in prior.items())
            print(f"  {mode:13s} {inference:5s} (prior {prior})  acc/log-loss  {cells}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["pal_a"])
    parser.add_argument("--data", nargs="+", default=["ideal_point", "hidden_types"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--trained", nargs="+", default=None,
                        help="finished run directories (e.g. a sweep's jobs) to score instead of training; "
                             "their own seeds, shots and draws are used")
    parser.add_argument("--cache", default=None, help="with --trained: the dataset cache the runs used")
    parser.add_argument("--modes", nargs="+", default=None, help="with --trained: split modes to score (default: the runs')")
    args = parser.parse_args()
    if args.trained:
        for run_dir in map(pathlib.Path, args.trained):
            results = json.loads((run_dir / "results.json").read_text())
            ev = EvalConfig(shots=[int(k) for k in results["config"]["eval"]["shots"]], modes=args.modes or list(results["config"]["eval"]["modes"]),
                            draws=int(results["config"]["eval"]["draws"]))
            r = score(run_dir, args.cache, ev, list(results["config"]["seeds"]), results["seen"]["accuracy"])
            print_comparison(f"{results['model']} on {results['dataset']} ({run_dir})", r, ev.shots)
        return
    root = pathlib.Path(tempfile.mkdtemp(prefix="eb_vs_map-"))
    for data in args.data:
        for model in args.models:
            print_comparison(f"{model} on {data}", compare(model, data, root, args.seeds), SHOTS)


if __name__ == "__main__":
    main()
