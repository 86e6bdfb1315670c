"""Collecting `results.json` files into one comparison table.

The numbers printed are read straight from each run's results file; nothing is
recomputed, so the table and the files cannot disagree.
"""

from __future__ import annotations

import json
import pathlib

from rich.console import Console
from rich.table import Table

TABLE_SHOTS = (1, 5, 20)


def collect_results(root: str | pathlib.Path) -> list[dict]:
    """Every complete results.json under root (a run or a multirun directory), sorted by path."""
    out = []
    for path in sorted(pathlib.Path(root).rglob("results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "complete":
            out.append({**results, "path": str(path)})
    return out


def _fmt(x, std=None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if std is None else f"{x:.3f} ± {std:.3f}"


def results_table(results: list[dict], shots=TABLE_SHOTS) -> Table:
    table = Table(
        title="pluralign results: accuracy, mean ± std over seeds (unseen users: random support/query)",
        caption="Bayes-opt: accuracy of the true model; best 1-reward: best non-personalized predictor (synthetic data)",
    )
    columns = ("model", "dataset", "seeds", "seen acc", *(f"unseen k={k}" for k in shots), "Bayes-opt", "best 1-reward", "wall s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "dataset") else "right")
    for r in results:
        at_k = r["unseen"]["accuracy_at_k"]
        std_k = r["unseen"].get("accuracy_std_at_k", {})
        table.add_row(
            r["model"], r["dataset"], str(len(r["seeds"])),
            _fmt(r["seen"]["accuracy"], r["seen"].get("accuracy_std")),
            *(_fmt(at_k.get(str(k)), std_k.get(str(k))) for k in shots),
            _fmt(r.get("bayes_optimal_accuracy")), _fmt(r.get("population_optimal_accuracy")),
            f"{r['wall_seconds']:.0f}",
        )
    return table


def print_results(root: str | pathlib.Path, console: Console | None = None) -> list[dict]:
    results = collect_results(root)
    # Wide enough for the table even when stdout is a pipe or a CI log (rich would assume 80).
    console = console or Console(width=max(Console().width, 160))
    if not results:
        console.print(f"no complete results.json under {root}")
    else:
        console.print(results_table(results))
    return results
