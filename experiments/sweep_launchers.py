"""The same small sweep under Hydra's basic launcher and submitit's local executor: identical numbers.

Command:   python experiments/sweep_launchers.py [--out experiments/out/sweep_launchers]
Runtime:   about 2-4 minutes on 2 CPU cores (2 × 6 small jobs; submitit runs its jobs as parallel processes).
Expected:  every job's results.json holds the same numbers under both launchers (every field but
           wall time); the job directories have the same names (named by overrides, not by launcher).
           Prints both tables and "identical: True".

What it shows: a sweep's result does not depend on where its jobs run, so moving it to a cluster
(`hydra/launcher=slurm`) changes nothing but the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

SWEEP = ["-m", "model=bt,pal_a,dprm", "seed=0,1", "train=fast", "eval=fast", "train.max_epochs=5",
         "data.n_users=60", "data.n_items=200", "data.comparisons_per_user=30", "data.dim=16"]
NOT_COMPARED = {"wall_seconds", "path"}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        elif k not in NOT_COMPARED and key != "config.cache_dir":
            out[key] = v
    return out


def sweep(out: pathlib.Path, launcher: list[str], cache: pathlib.Path) -> tuple[dict, float]:
    env = {**os.environ, "PLURALIGN_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pluralign.cli", *SWEEP, f"hydra.sweep.dir={out}", *launcher],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep {launcher or 'basic'} failed:\n{proc.stderr[-3000:]}")
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))}, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/out/sweep_launchers")
    args = parser.parse_args()
    root = pathlib.Path(args.out).absolute()
    shutil.rmtree(root, ignore_errors=True)
    cache = root / "cache"
    basic, basic_wall = sweep(root / "basic", [], cache)
    local, local_wall = sweep(root / "submitit_local", ["hydra/launcher=local"], cache)

    print(f"{'job (model, seed)':<20} {'launcher':<15} {'seen acc':>10} {'unseen k=1':>11} {'unseen k=5':>11} {'best val loss':>14}")
    for job in sorted(basic.keys() | local.keys()):
        for name, results in (("basic", basic), ("submitit_local", local)):
            r = results.get(job)
            if r is None:
                print(f"{job:<20} {name:<15} missing")
                continue
            at_k = r["unseen"]["accuracy_at_k"]
            print(f"{r['model'] + ' ' + str(r['seeds'][0]):<20} {name:<15} {r['seen']['accuracy']:>10.6f} {at_k['1']:>11.6f} {at_k['5']:>11.6f} "
                  f"{r['train']['best_val_loss'][0]:>14.8f}")
    same_jobs = basic.keys() == local.keys()
    differing = sorted(
        f"{job}: {key}" for job in basic.keys() & local.keys()
        for key in _flat(basic[job]).keys() | _flat(local[job]).keys()
        if _flat(basic[job]).get(key) != _flat(local[job]).get(key)
    )
    print(f"jobs: {len(basic)} basic, {len(local)} submitit_local; same job directories: {same_jobs}")
    print(f"fields compared per job: {len(_flat(next(iter(basic.values()))))}; differing: {differing[:10] or 'none'}")
    print(f"wall: basic {basic_wall:.0f} s, submitit_local {local_wall:.0f} s")
    print(f"identical: {same_jobs and not differing}")


if __name__ == "__main__":
    main()
