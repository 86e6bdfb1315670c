"""Benchmark: the unseen-user evaluation against the training it follows, timed in the same run.

Budget (docs/results/performance.md): a model's unseen-user evaluation (the few-shot scale and
gate decided on the calibration users, then unseen-val and unseen-test users scored) takes no
longer than its training. For each model, on the main job's data and settings
(`experiment=main`: built-in ideal-point data, 3 seeds), this trains as the main job does, then
runs the evaluation twice in one process:
  cold   every few-shot program compiled here, as in a first run;
  warm   the same again, its programs loaded from a compilation cache the cold pass filled (a
         temporary one), as a re-run finds them in `$PLURALIGN_CACHE/compiled`.
It prints both times, their ratio to training, and how many of the prior-scale grid's settings
the calibration scored (it walks the grid from its middle: `shrinkage.local_minimum`).

  python scripts/bench_evaluation.py [--models pal_a pal_b] [--overrides eval.draws=1 ...]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import tempfile
import time

import jax
from hydra import compose, initialize_config_dir

from pluralign import cli
from pluralign import run as R


def settings_scored(unseen: dict) -> str:
    """'scored/grid' per split mode, summed over k, from results.json-style `unseen.shrinkage`."""
    out = []
    for mode, by_k in unseen["shrinkage"].items():
        scored = sum(sum(v is not None for v in d["grid_log_loss"]) for d in by_k.values())
        total = sum(len(d["grid"]) for d in by_k.values())
        out.append(f"{mode} {scored}/{total}")
    return ", ".join(out) or "-"


def bench(model: str, overrides: list[str]) -> dict:
    with initialize_config_dir(str(cli.CONF_DIR), version_base="1.3"):
        config = cli.run_config(compose(config_name="config", overrides=["experiment=main", f"model={model}", *overrides]))
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-eval-{model}-"))
    data = R.load_and_split(config, run_dir)
    models = R.build_models(config, data)
    t = time.perf_counter()
    trained = R.train_models(config, data, models, run_dir)
    train_s = time.perf_counter() - t
    data = R.evaluation_data(data, config)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        unseen = R.evaluate_unseen_users(models.graphdef, trained.best_params, data, config)
        times.append(time.perf_counter() - t)
    return {"model": model, "train": train_s, "cold": times[0], "warm": times[1], "scored": settings_scored(unseen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["pal_a", "pal_b"])
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides, e.g. eval.draws=1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # A fresh persistent compilation cache: the cold pass compiles and fills it, the warm one loads.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench-eval-jax-cache-"))
    cli.register_schemas()
    rows = [bench(m, args.overrides) for m in args.models]
    print(f"{'model':8} {'train s':>8} {'eval cold s':>12} {'ratio':>6} {'eval warm s':>12} {'ratio':>6}  grid settings scored")
    for r in rows:
        print(f"{r['model']:8} {r['train']:8.1f} {r['cold']:12.1f} {r['cold'] / r['train']:6.2f} {r['warm']:12.1f} "
              f"{r['warm'] / r['train']:6.2f}  {r['scored']}")
    print("budget: evaluation / training <= 1")


if __name__ == "__main__":
    main()
