"""Empirical-Bayes few-shot inference vs MAP with a prior strength picked from a grid.

    PYTHONPATH=. python experiments/eb_vs_map.py [--models pal_a lore] [--data ideal_point hidden_types]

Trains each (model, data) once with `run.run` (default data sizes, seed 0), then scores the
same trained parameters on the same unseen-test users both ways, the prior setting chosen on
unseen-val users in the same split mode: `bayes` (prior fitted to the seen users' states,
Laplace posterior, posterior-predictive probabilities; precision multiplier from
`eval.prior_scales`) and `map` (isotropic prior, strength from `eval.prior_strengths`).
Prints accuracy and log-loss at k = 1, 2, 5, 20 in both modes.
Runtime: about 3 minutes per (model, data) on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
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
from pluralign.run import RunConfig, make_tables, run, select_prior
from pluralign.train.trainer import TrainConfig

DATA = {"ideal_point": IdealPointConfig(), "hidden_types": HiddenTypesConfig()}
SHOTS = [1, 2, 5, 20]


def compare(model: str, data: str, root: pathlib.Path, seeds: list[int]) -> dict:
    ev = EvalConfig(shots=SHOTS, modes=["random", "item_disjoint"], draws=2, inference="map")
    config = RunConfig(model=model_config(model), data=DATA[data], train=TrainConfig(progress=False, checkpoint=False),
                       eval=ev, seeds=seeds, cache_dir=str(root / "cache"))
    results = run(config, root / f"{model}-{data}")
    trained = pluralign.load(root / f"{model}-{data}")
    dataset = trained.load_dataset(str(root / "cache"))
    tables = make_tables(dataset)
    split = trained.record
    users = trained.users
    val = np.flatnonzero(users["split"] == "unseen_val")
    test = np.flatnonzero(users["split"] == "unseen_test")
    common = dict(shots=SHOTS, seeds=seeds, draws=ev.draws, min_user_fraction=ev.min_user_fraction,
                  seen_users=jnp.asarray(trained.seen_users), user_group=None)
    model_obj = trained.model
    out = {"map": {}, "bayes": {}, "seen_accuracy": results["seen"]["accuracy"]}
    for inference in ("map", "bayes"):
        e = dataclasses.replace(ev, inference=inference)
        adapt = fewshot.make_adapt_and_predict(trained.graphdef, e.inference_steps, e.inference_learning_rate, inference)
        for mode in ev.modes:
            value, _ = select_prior(adapt, trained.all_params, tables, dataset.comparisons, val, model_obj, e, mode, common)
            curve = fewshot.evaluate_unseen(adapt, trained.all_params, tables, dataset.comparisons, test, mode=mode,
                                            prior_strength=value, **common)
            out[inference][mode] = {"prior": value, "curve": curve}
    del split
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["pal_a"])
    parser.add_argument("--data", nargs="+", default=["ideal_point", "hidden_types"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="eb_vs_map-"))
    for data in args.data:
        for model in args.models:
            r = compare(model, data, root, args.seeds)
            print(f"\n{model} on {data} (seen accuracy {r['seen_accuracy']:.4f})")
            for mode in ("random", "item_disjoint"):
                for inference in ("map", "bayes"):
                    m = r[inference][mode]
                    cells = "  ".join(
                        f"k={k}: {m['curve'][k]['accuracy']:.4f}/{m['curve'][k]['log_loss']:.4f}" for k in SHOTS if k in m["curve"]
                    )
                    print(f"  {mode:13s} {inference:5s} (prior {m['prior']:g})  acc/log-loss  {cells}")


if __name__ == "__main__":
    main()
