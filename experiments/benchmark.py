"""Every model on every built-in synthetic dataset: the whole comparison table, 3 seeds.

Command:   python experiments/benchmark.py [--out experiments/out/benchmark] [--models bt,pal_a] [--data ideal_point]
Runtime:   109 runs (13 models × 9 datasets less 8 refused): 6,495 s wall, 4,660 s CPU on the project's
           2 CPU cores while other jobs shared them (before linear_bt, linear_personal, lore and
           shared_plus_low_rank: 73 runs, 390 s wall on the nearly idle machine); each run trains its 3
           seeds in one vmapped program. `--readme-table` prints the README's table from the finished runs.
Expected:  one table (printed, and results.md / results.csv / k-shot curves / per-user histograms under
           OUT/report). With these short settings: PAL-A/PAL-B, VPL and GPM-personal beat BT by 8-20
           points of seen accuracy on ideal_point and hidden_types and their unseen-user accuracy rises
           from k=1 to k=5 (PAL-A on ideal_point ~0.74 -> ~0.83); BT, DPL (mv, cat) and DPRM stay near the
           best non-personalized accuracy, flat in k; GPM and GPM-personal reach 1.00 on cyclic_triplets
           where every scalar reward stays near or below 2/3 (DPL-categorical ~0.75: comparing two
           independent reward distributions can be intransitive, like non-transitive dice); DPA is
           run on multi_attribute only (the other datasets have no attribute ratings).

Generic over `pluralign.models.REGISTRY` and `pluralign.data.sources.GENERATORS`: a family or a
generator that registers itself (with its conf/model or conf/data YAML) appears here with no edit.
A dataset that reads external files (its config has a `path` field) is skipped, and so is a
model that refuses a dataset (e.g. DPA without attribute ratings), each with the reason printed.
Settings: conf/experiment/benchmark.yaml, plus smaller datasets (SIZES below). A re-run skips the
cells that already finished (their results.json is complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import resource
import sys
import time
import traceback

from hydra import compose, initialize_config_module

from pluralign import cli
from pluralign.data.format import DatasetError
from pluralign.data.sources import GENERATORS, load_dataset
from pluralign.evaluate.report import print_results, write_report
from pluralign.models import REGISTRY
from pluralign.run import finished_results, run

CONF = pathlib.Path(cli.__file__).parent / "conf"
# Upper bounds on each generator's size fields (applied only where the config has the field).
SIZES = {"n_users": 200, "n_items": 500, "comparisons_per_user": 40, "triplets_per_user": 12}


def _compose(overrides: list[str]):
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def models() -> list[str]:
    return [name for name in REGISTRY if (CONF / "model" / f"{name}.yaml").exists()]


def datasets() -> tuple[list[str], dict[str, str]]:
    """Built-in data options (conf/data/*.yaml of a GENERATORS kind) and the skipped ones with why."""
    keep, skipped = [], {}
    for path in sorted((CONF / "data").glob("*.yaml")):
        option = path.stem
        try:
            data = _compose([f"data={option}"]).data
        except Exception as e:  # noqa: BLE001 - a config that does not compose alone is reported, not fatal
            skipped[option] = f"does not compose on its own ({type(e).__name__})"
            continue
        if data.kind not in GENERATORS:
            skipped[option] = f"kind {data.kind!r} reads a dataset from disk"
        elif any(f.name == "path" for f in dataclasses.fields(GENERATORS[data.kind][0])):
            skipped[option] = "reads external files (data.path)"
        else:
            keep.append(option)
    return keep, skipped


def size_overrides(option: str) -> list[str]:
    data = _compose([f"data={option}"]).data
    return [f"data.{k}={min(int(data[k]), v)}" for k, v in SIZES.items() if k in data]


def readme_table(out: pathlib.Path, k: int = 5) -> str:
    """The README's benchmark table from the finished cells under `out`: one row per model, one
    column per dataset, each cell "seen accuracy / unseen-test accuracy at k shots (random mode)"
    (3-seed means, as in results.json); "—" where the model did not run on the data, and the
    Bayes-optimal ceiling of each dataset as the last row."""
    cells, bayes = {}, {}
    for path in sorted(out.glob("*/results.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "complete":
            continue
        unseen = r["unseen"]["by_mode"].get("random", {}).get(str(k), {}).get("accuracy")
        cells[r["model"], r["dataset"]] = f"{r['seen']['accuracy']:.3f} / " + ("—" if unseen is None else f"{unseen:.3f}")
        if r.get("bayes_optimal_accuracy") is not None:
            bayes[r["dataset"]] = f"{r['bayes_optimal_accuracy']:.3f}"
    names = [m for m in REGISTRY if any(m == model for model, _ in cells)]
    data = sorted({d for _, d in cells})
    lines = ["| model | " + " | ".join(f"`{d}`" for d in data) + " |", "|---|" + "---|" * len(data)]
    lines += [f"| `{m}` | " + " | ".join(cells.get((m, d), "—") for d in data) + " |" for m in names]
    lines.append("| Bayes-optimal | " + " | ".join(bayes.get(d, "—") for d in data) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/out/benchmark")
    parser.add_argument("--models", default=None, help="comma-separated subset of REGISTRY")
    parser.add_argument("--data", default=None, help="comma-separated subset of the data options")
    parser.add_argument("--readme-table", action="store_true",
                        help="only print the README's table (seen / unseen k=5) from the finished cells under --out")
    args = parser.parse_args()
    if args.readme_table:
        print(readme_table(pathlib.Path(args.out)))
        return
    logging.getLogger("absl").setLevel(logging.WARNING)
    out = pathlib.Path(args.out)
    t0 = time.perf_counter()

    model_names = args.models.split(",") if args.models else models()
    data_options, skipped_data = datasets()
    if args.data:
        data_options = [d for d in data_options if d in args.data.split(",")]
    for option, why in skipped_data.items():
        print(f"skip data={option}: {why}")
    print(f"models ({len(model_names)}): {', '.join(model_names)}")
    print(f"datasets ({len(data_options)}): {', '.join(data_options)}")

    ran, skipped, failed = 0, [], []
    for option in data_options:
        sizes = size_overrides(option)
        for name in model_names:
            config = cli.run_config(_compose(["experiment=benchmark", f"model={name}", f"data={option}", *sizes]))
            run_dir = out / f"{name}_{option}"
            if finished_results(run_dir, config) is not None:
                print(f"done already: {name} × {option}")
                continue
            try:
                load_dataset(config.data, config.cache_dir)
            except (DatasetError, FileNotFoundError, ValueError) as e:
                skipped.append((name, option, f"dataset unavailable: {e}"))
                print(f"skip {name} × {option}: dataset unavailable: {e}")
                continue
            t = time.perf_counter()
            try:
                results = run(config, run_dir)
            except (DatasetError, ValueError) as e:  # the model refuses this data (e.g. no attributes)
                skipped.append((name, option, str(e)))
                print(f"skip {name} × {option}: {e}")
                continue
            except Exception as e:  # noqa: BLE001 - one broken cell must not lose the table
                failed.append((name, option, f"{type(e).__name__}: {e}"))
                print(f"FAILED {name} × {option}: {type(e).__name__}: {e}")
                traceback.print_exc()
                continue
            ran += 1
            print(f"{name} × {option}: seen {results['seen']['accuracy']:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)

    print_results(out)
    for kind, path in write_report(out).items():
        print(f"{kind}: {path}")
    for name, option, why in skipped:
        print(f"skipped {name} × {option}: {why}")
    for name, option, why in failed:
        print(f"FAILED {name} × {option}: {why}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds next to the wall time: on a machine shared with other work the wall time
    # overstates what the benchmark needs; on idle cores the two are comparable.
    print(f"benchmark: {ran} runs trained, {len(skipped)} skipped, {len(failed)} failed; "
          f"wall {time.perf_counter() - t0:.0f} s, CPU {usage.ru_utime + usage.ru_stime:.0f} s, load average {os.getloadavg()[0]:.1f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
