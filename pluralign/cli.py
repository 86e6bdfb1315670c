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
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import sys

# Only light imports at module level: `pluralign --help`, `pluralign options ...` and a sweep's
# callback lookup must not pay for JAX (seconds). The run and the reports import it when used.
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pluralign import rundir

CONF_DIR = pathlib.Path(__file__).parent / "conf"
HELP_FLAGS = ("-h", "--help")


def run_config(cfg: DictConfig) -> RunConfig:
    """Hydra config -> the library's typed RunConfig; a key no schema knows (`+model.hiden=3`:
    Hydra's `+` adds it) is refused as a typo would be."""
    from pluralign.config import check_known_keys
    from pluralign.run import RunConfig

    check_known_keys(cfg)
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
    from pluralign.data.sources import check_data_source
    from pluralign.evaluate.report import print_results
    from pluralign.run import finished_results, run
    from pluralign.train import distributed

    run_dir = pathlib.Path(HydraConfig.get().runtime.output_dir)
    try:
        config = run_config(cfg)
        done_in = run_dir  # where the results are: run_dir, or a finished job's directory under its old name
        results = finished_results(run_dir, config)  # a re-run sweep skips the jobs that finished
        legacy = legacy_job_dir(run_dir)
        if results is None and legacy is not None:  # a sweep started before path values were shortened
            results, done_in = finished_results(legacy, config), legacy
            if results is not None:
                remove_unstarted_run_dir(run_dir)
        if results is not None:
            print(f"skipped, already complete: {done_in / 'results.json'}")
        else:
            check_data_source(config.data, option_prefix="data.")  # every missing column at once
            use_compilation_cache()
            results = run(config, run_dir)
    except ValueError as e:  # bad user data (DatasetError) or a bad config value: a message, not a traceback
        if HydraConfig.get().mode.name != "RUN":
            raise  # a sweep keeps the failed job's directory: `pluralign report` lists it as incomplete
        remove_unstarted_run_dir(run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or (run_dir / "checkpoints").exists():
            raise  # failed while training: the whole traceback
        print(f"pluralign: error: {e}\n(HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)
    print(f"results: {done_in / 'results.json'}")
    if HydraConfig.get().mode.name == "RUN" and distributed.is_primary():  # process 0 wrote the results
        print_results(done_in)
    # What sweepers maximise: unseen-*val* accuracy (never test), averaged over k.
    val = {k: v for k, v in results["unseen"]["val_accuracy_at_k"].items() if v is not None}  # null: undefined
    # NaN when no unseen-val user reaches any k (tiny data): Optuna records the trial as failed.
    return float(sum(val.values()) / len(val)) if val else float("nan")


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache in `$PLURALIGN_CACHE/compiled` (default `~/.cache/pluralign/compiled`)
    unless `JAX_COMPILATION_CACHE_DIR` names another or `PLURALIGN_JAX_CACHE=0`: a run compiles a
    few dozen programs (1-3 s each on CPU), and the next run of the same model and shapes (a re-run,
    the other jobs of a sweep, each a process of its own) loads them instead. JAX keys each program
    by its computation, shapes, flags and jax version, so a stale entry is never used. The cache
    is kept under `JAX_CACHE_MAX_BYTES`, least recently used entries dropped first, unless
    `JAX_COMPILATION_CACHE_MAX_SIZE` sets another bound. (JAX's eviction needs an access-time file
    beside every entry; `~/.cache/pluralign/jax`, where pluralign 2026-12-05 kept an unbounded
    cache, has none, and JAX fails every write into it: hence a directory of its own.)"""
    import jax

    if jax.config.jax_compilation_cache_dir or os.environ.get("PLURALIGN_JAX_CACHE") == "0":
        return
    from pluralign.data.sources import default_cache_dir

    jax.config.update("jax_compilation_cache_dir", str(default_cache_dir() / "compiled"))
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and importlib.util.find_spec("filelock"):  # JAX evicts under its lock
        jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_MAX_BYTES)


JAX_CACHE_MAX_BYTES = 2**30  # the compilation cache's bound (1 GiB; the main job's programs take ~5 MB)


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


def legacy_job_dir(run_dir: pathlib.Path) -> pathlib.Path | None:
    """Where a sweep job's directory was before path-valued overrides were shortened
    (`rundir.job_dirname`): `<sweep>/<model>_<data>/<overrides as typed>`, slashes and all; None
    outside a sweep or where the two names agree."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode.name != "MULTIRUN" or "/" not in hydra_cfg.job.override_dirname:
        return None
    legacy = run_dir.parent / hydra_cfg.job.override_dirname
    return legacy if legacy != run_dir else None


@hydra.main(version_base="1.3", config_path="conf", config_name="embed")
def embed_app(cfg: DictConfig) -> None:
    embed_command(cfg)


def embed_command(cfg: DictConfig) -> None:
    """`pluralign embed` on a composed conf/embed.yaml: the dataset written and its figures
    printed, or a one-line error and exit status 1."""
    from pluralign.config import check_known_keys
    from pluralign.data.embed_table import embed_table
    from pluralign.data.sources import check_embed_columns

    try:
        check_known_keys(cfg, see="pluralign embed --help")
        config = OmegaConf.to_object(cfg)
        check_embed_columns(config)  # every missing column at once, before the encoder loads
        path = embed_table(config)
    except (ValueError, OSError) as e:  # bad input (DatasetError is a ValueError): one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"pluralign embed: error: {e}\n(HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)
    info = json.loads((path / "meta.json").read_text())["embed"]
    print(f"dataset: {path}")
    print(f"texts: {info['texts']:,} ({info['encoded']:,} encoded, {info['reused_from_work_dir']:,} reused) "
          f"in {info['encode_seconds']:.1f} s: {info['texts_per_second'] or 0:,.1f} texts/s "
          f"({json.loads((path / 'meta.json').read_text())['encoder'].get('dtype')})")


class ResultsTableCallback(Callback):
    """Prints one table of every run when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from pluralign.evaluate.report import print_results

        sweep_dir = pathlib.Path(config.hydra.sweep.dir)
        print_results(sweep_dir)
        print(f"sweep directory: {sweep_dir}")


def help_page() -> str:
    """`pluralign --help`, from conf/hydra/help/pluralign.yaml and the conf/ folders, without
    composing a config (which would import every model, and JAX with them)."""
    import yaml

    from pluralign.options import groups_help

    page = yaml.safe_load((CONF_DIR / "hydra" / "help" / "pluralign.yaml").read_text())
    return "\n".join([page["header"], "Config groups (pick one option per group: GROUP=OPTION)", "", groups_help(), "",
                      page["footer"]]).rstrip()


def embed_help_page() -> str:
    """`pluralign embed --help`: the command, every option of conf/embed.yaml with its meaning,
    the encoders."""
    from pluralign.data.embed_table import EmbedConfig
    from pluralign.options import field_docs, groups_help

    usage = [line.removeprefix("#").removeprefix(" ") for line in (CONF_DIR / "embed.yaml").read_text().splitlines()
             if line.startswith("#")]
    lines = ["usage: pluralign embed input=TABLE output=DIR [KEY=VALUE ...] [encoder=hf encoder.KEY=VALUE ...]", "",
             *usage, "", "Options (KEY=VALUE; columns are named with user=, a=, b=, label=, prompt=, ...):"]
    for f in field_docs(EmbedConfig):
        if f.name == "encoder":
            continue
        lines.append(f"  {f.name + '=' + f.default:<28} {f.doc}".rstrip())
    lines += ["", groups_help(["encoder"]), "  (pluralign options encoder/NAME lists encoder.* fields)"]
    return "\n".join(lines)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "report":
        parser = argparse.ArgumentParser(prog="pluralign report", description="Tables and figures of finished runs.")
        parser.add_argument("dir", metavar="RUN_OR_MULTIRUN_DIR")
        parser.add_argument("--out", metavar="DIR", help="where to write them (default: RUN_OR_MULTIRUN_DIR/report)")
        parser.add_argument("--latex", action="store_true", help="also write results.tex (best per column in bold)")
        args = parser.parse_args(sys.argv[2:])
        from pluralign.evaluate.report import print_results, write_report

        if not print_results(args.dir):
            sys.exit(1)
        for kind, path in write_report(args.dir, args.out, latex=args.latex).items():  # markdown + CSV tables, k-shot curves, histograms
            print(f"{kind}: {path}")
        return
    if command == "options":
        from pluralign.options import GROUPS, options_page

        parser = argparse.ArgumentParser(prog="pluralign options", description="Every field of a config group or option.")
        parser.add_argument("group", metavar="GROUP[/OPTION]", help=f"one of {', '.join(GROUPS)}, optionally /OPTION")
        args = parser.parse_args(sys.argv[2:])
        try:
            print(options_page(args.group))
        except ValueError as e:
            parser.error(str(e))
        return
    if command == "serve":
        from pluralign.serve.cli import main as serve_main

        serve_main(sys.argv[2:])
        return
    if command == "data":  # pluralign data fetch NAME | list (pluralign.data.public)
        from pluralign.data.public import main as data_main

        sys.exit(data_main(sys.argv[2:]))
    if command == "pairs":
        from pluralign.export.pairs import main as pairs_main

        pairs_main(sys.argv[2:])
        return
    if command == "embed":
        if any(arg in HELP_FLAGS for arg in sys.argv[2:]):
            print(embed_help_page())
            return
        del sys.argv[1]  # the rest are Hydra overrides of conf/embed.yaml
        register_schemas()
        embed_app()
        return
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(help_page())
        return
    register_schemas()
    train_app()


def register_schemas() -> None:
    """The structured configs that validate every option (imports every model: seconds)."""
    from pluralign.config import register_configs

    register_configs()


if __name__ == "__main__":
    main()
