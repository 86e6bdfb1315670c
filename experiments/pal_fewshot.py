"""PAL's few-shot curve against BT on the ideal-point data (the main job, conf/experiment/main.yaml).

Command:   python experiments/pal_fewshot.py [--out experiments/out/pal_fewshot]
Runtime:   about 1 minute on 2 CPU cores (measured 61 s; 3 models × 3 vmapped seeds, k = 1…50, both modes).
Expected:  PAL-A and PAL-B unseen-user accuracy climbs with k, from ~0.74 at k=1 to within ~3
           points of the Bayes-optimal accuracy (~0.92) at k=20, in both the random and the
           item-disjoint mode; BT stays flat in k just under the best non-personalized accuracy
           (~0.73). Prints the curves, writes OUT/report/kshot_{random,item_disjoint}.png, and
           ends with "as expected: True".

It is the main job run as a Hydra multirun (`pluralign experiment=main hydra.sweep.dir=OUT`)
followed by `pluralign report OUT`; a re-run skips the models that finished.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

from pluralign.evaluate.report import collect_results, write_report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/out/pal_fewshot")
    args = parser.parse_args()
    out = pathlib.Path(args.out).absolute()
    subprocess.run([sys.executable, "-m", "pluralign.cli", "experiment=main", f"hydra.sweep.dir={out}"], check=True)
    for kind, path in write_report(out).items():
        print(f"{kind}: {path}")

    runs = {r["model"]: r for r in collect_results(out)}
    ok = True
    for mode in ("random", "item_disjoint"):
        print(f"\nunseen-user accuracy, {mode} mode (mean over seeds and draws)")
        shots = sorted({int(k) for r in runs.values() for k in r["unseen"]["by_mode"][mode]})
        print("model   " + "".join(f"{f'k={k}':>8}" for k in shots))
        for model, r in sorted(runs.items()):
            curve = r["unseen"]["by_mode"][mode]
            print(f"{model:<8}" + "".join(f"{curve[str(k)]['accuracy']:>8.3f}" if curve.get(str(k), {}).get("accuracy") is not None else f"{'—':>8}" for k in shots))
        bt = runs["bt"]["unseen"]["by_mode"][mode]
        for model in ("pal_a", "pal_b"):
            curve = runs[model]["unseen"]["by_mode"][mode]
            ok &= curve["20"]["accuracy"] > curve["1"]["accuracy"] + 0.05 and curve["20"]["accuracy"] > bt["20"]["accuracy"] + 0.05
    print(f"\nBayes-optimal {runs['bt']['bayes_optimal_accuracy']:.3f}, best non-personalized {runs['bt']['population_optimal_accuracy']:.3f}")
    print(f"as expected: {ok}")


if __name__ == "__main__":
    main()
