"""Console entry point `pluralign` (a Hydra app) and its sub-commands.

  pluralign [hydra overrides]      train + evaluate one run (or a sweep with -m)
  pluralign report DIR             print the results table of a run or multirun directory
  pluralign embed [overrides]      embed a table of texts into a dataset (conf/embed.yaml)
  pluralign data fetch NAME        get a public data set (swissmetro, rail_nl, persona); `data list`: where each is
  pluralign options GROUP[/OPTION] every field of a config group or option, with its meaning

Hydra stays here and in `pluralign.config`; the library underneath takes dataclasses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pluralign import rundir
from pluralign.config import register_configs
from pluralign.evaluate.report import print_results, write_report
from pluralign.run import RunConfig, finished_results, run
from pluralign.train import distributed

register_configs()


def run_config(cfg: DictConfig) -> RunConfig:
    """Hydra config -> the library's typed RunConfig."""
    return RunConfig(
        model=OmegaConf.to_object(cfg.model),
        data=OmegaConf.to_object(cfg.data),
        train=OmegaConf.to_object(cfg.train),
        eval=OmegaConf.to_object(cfg.eval),
        seeds=list(cfg.seeds) if cfg.seeds is not None else [cfg.seed],
        cache_dir=cfg.cache_dir,
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def train_app(cfg: DictConfig) -> float:
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax logs every checkpoint at INFO; jax its backend probing
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = pathlib.Path(HydraConfig.get().runtime.output_dir)
    try:
        config = run_config(cfg)
        results = finished_results(run_dir, config)  # a re-run sweep skips the jobs that finished
        if results is not None:
            print(f"skipped, already complete: {run_dir / 'results.json'}")
        else:
            results = run(config, run_dir)
    except ValueError as e:  # bad user data (DatasetError) or a bad config value: a message, not a traceback
        if HydraConfig.get().mode.name != "RUN":
            raise  # a sweep keeps the failed job's directory: `pluralign report` lists it as incomplete
        remove_unstarted_run_dir(run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or (run_dir / "checkpoints").exists():
            raise  # failed while training: the whole traceback
        print(f"pluralign: error: {e}\n(HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)
    print(f"results: {run_dir / 'results.json'}")
    if HydraConfig.get().mode.name == "RUN" and distributed.is_primary():  # process 0 wrote the results
        print_results(run_dir)
    # What sweepers maximise: unseen-*val* accuracy (never test), averaged over k.
    val = {k: v for k, v in results["unseen"]["val_accuracy_at_k"].items() if v is not None}  # null: undefined
    # NaN when no unseen-val user reaches any k (tiny data): Optuna records the trial as failed.
    return float(sum(val.values()) / len(val)) if val else float("nan")


# What Hydra and pluralign.run write before training starts; a run directory holding nothing
# else has no checkpoint or result worth keeping when the run fails.
_BEFORE_TRAINING = {".hydra", "cli.log", rundir.LOCK_FILE, "run_config.json", "split.json", "metrics.jsonl", "tensorboard"}


def remove_unstarted_run_dir(run_dir: pathlib.Path) -> None:
    """Removes a run directory that a failed run left without any checkpoint or result."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _BEFORE_TRAINING:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents[:2]:  # outputs/<date>/ too, when this run was all it held
            if parent.resolve() == pathlib.Path.cwd().resolve() or any(parent.iterdir()):
                break
            parent.rmdir()


@hydra.main(version_base="1.3", config_path="conf", config_name="embed")
def embed_app(cfg: DictConfig) -> None:
    from pluralign.data.embed_table import embed_table

    config = OmegaConf.to_object(cfg)
    path = embed_table(config)
    info = json.loads((path / "meta.json").read_text())["embed"]
    print(f"dataset: {path}")
    print(f"texts: {info['texts']:,} ({info['encoded']:,} encoded, {info['reused_from_work_dir']:,} reused) "
          f"in {info['encode_seconds']:.1f} s: {info['texts_per_second'] or 0:,.1f} texts/s "
          f"({json.loads((path / 'meta.json').read_text())['encoder'].get('dtype')})")


class ResultsTableCallback(Callback):
    """Prints one table of every run when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = pathlib.Path(config.hydra.sweep.dir)
        print_results(sweep_dir)
        print(f"sweep directory: {sweep_dir}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        parser = argparse.ArgumentParser(prog="pluralign report", description="Tables and figures of finished runs.")
        parser.add_argument("dir", metavar="RUN_OR_MULTIRUN_DIR")
        parser.add_argument("--out", metavar="DIR", help="where to write them (default: RUN_OR_MULTIRUN_DIR/report)")
        parser.add_argument("--latex", action="store_true", help="also write results.tex (best per column in bold)")
        args = parser.parse_args(sys.argv[2:])
        if not print_results(args.dir):
            sys.exit(1)
        for kind, path in write_report(args.dir, args.out, latex=args.latex).items():  # markdown + CSV tables, k-shot curves, histograms
            print(f"{kind}: {path}")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "options":
        from pluralign.options import GROUPS, options_page

        parser = argparse.ArgumentParser(prog="pluralign options", description="Every field of a config group or option.")
        parser.add_argument("group", metavar="GROUP[/OPTION]", help=f"one of {', '.join(GROUPS)}, optionally /OPTION")
        args = parser.parse_args(sys.argv[2:])
        try:
            print(options_page(args.group))
        except ValueError as e:
            parser.error(str(e))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "data":  # pluralign data fetch NAME | list (pluralign.data.public)
        from pluralign.data.public import main as data_main

        sys.exit(data_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "embed":
        del sys.argv[1]  # the rest are Hydra overrides of conf/embed.yaml
        embed_app()
        return
    train_app()


if __name__ == "__main__":
    main()
