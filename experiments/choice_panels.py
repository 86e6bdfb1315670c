"""Real users on the two stated-preference choice panels (issue 12's figures): experiment=choice_panels.

Command:   python experiments/choice_panels.py [--out experiments/out/choice_panels] [--models bt,pal_a]
           (--table-only DIR tabulates a finished sweep without running anything)
Runtime:   ~25 minutes on 2 busy CPU cores for BT, PAL-A, PAL-B and VPL (VPL ~12 of them).
Expected:  see the header of pluralign/conf/experiment/choice_panels.yaml and the README section
           "Real users: choice panels".

Runs the experiment config as one Hydra multirun into OUT (a re-run skips finished jobs), then
prints, per panel and model: seen-user accuracy, and unseen-test accuracy / log-loss at every k
in both few-shot modes with the number of users behind each figure (mean ± std over seeds).
Generic over the models that ran: models added to the config's sweep appear as rows.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

from pluralign.evaluate.report import collect_results


def run(out: pathlib.Path, models: str | None) -> None:
    overrides = ["experiment=choice_panels", f"hydra.sweep.dir={out}"]
    if models:
        overrides.append(f"model={models}")
    subprocess.run([sys.executable, "-m", "pluralign.cli", *overrides], check=True)


def table(results: list[dict]) -> None:
    for dataset in sorted({r["dataset"] for r in results}):
        runs = [r for r in results if r["dataset"] == dataset]
        print(f"\n{dataset}: accuracy (log-loss), mean ± std over {len(runs[0]['seeds'])} seeds; "
              "unseen-test users, n = users behind the figure")
        for r in runs:
            print(f"  {r['model']:<14} seen {r['seen']['accuracy']:.3f} ± {r['seen']['accuracy_std']:.3f}")
            for mode, by_k in r["unseen"]["by_mode"].items():
                cells = [f"k={k}: {v['accuracy']:.3f}±{v['accuracy_std']:.3f} ({v['log_loss']:.3f}) n={v['n_users']}"
                         if v["accuracy"] is not None else f"k={k}: — (too few users reach it)" for k, v in by_k.items()]
                print(f"      {mode:<14}" + "   ".join(cells))
                decided = r["unseen"].get("shrinkage", {}).get(mode) or {}
                if decided:  # the scale and the gate, decided on the calibration users
                    print(f"      {'':<14}decided: " + ", ".join(
                        f"k={k}: " + (f"scale {d['prior_scale']:.3g}" if d["personalize"] else "population")
                        + f" (gain {d['gain_log_loss']:+.3f}, {sum(d['n_users'].values())} users)" for k, d in decided.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/out/choice_panels")
    parser.add_argument("--models", default=None, help="comma-separated, overrides the config's sweep")
    parser.add_argument("--table-only", action="store_true", help="only tabulate OUT")
    args = parser.parse_args()
    out = pathlib.Path(args.out).absolute()
    if not args.table_only:
        run(out, args.models)
    table(collect_results(out))


if __name__ == "__main__":
    main()
