"""`pluralign report SWEEP_DIR`: tables and figures from the results.json files of a sweep.

The sweep directory here is made up (known numbers in hand-written results.json files), so
the test checks that the tables carry exactly those numbers, grouped as documented.
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np
import pytest

from pluralign import cli
from pluralign.evaluate.report import group_runs, write_report


def _results(model, seed_list, seen, unseen, *, lr=0.003, dataset="ideal_point", seen_std=0.0):
    """A results.json as `pluralign.run` writes it, with the given numbers."""
    by_mode = {
        mode: {str(k): {"accuracy": acc + (0.0 if mode == "random" else -0.05), "accuracy_std": 0.01}
               for k, acc in unseen.items()}
        for mode in ("random", "item_disjoint")
    }
    return {
        "status": "complete", "model": model, "dataset": dataset, "seeds": seed_list,
        "seen": {"accuracy": seen, "accuracy_std": seen_std, "log_loss": 0.5, "ece": 0.02, "per_user_p10": 0.6,
                 "per_user_histogram": {"edges": np.linspace(0, 1, 21).tolist(), "counts": [0] * 10 + [3, 5] + [0] * 8}},
        "unseen": {"accuracy_at_k": {str(k): a for k, a in unseen.items()},
                   "accuracy_std_at_k": {str(k): 0.01 for k in unseen}, "by_mode": by_mode},
        "bayes_optimal_accuracy": 0.93, "population_optimal_accuracy": 0.74, "wall_seconds": 10.0,
        "config": {"model": {"name": model}, "data": {"kind": dataset, "name": dataset}, "train": {"learning_rate": lr, "progress": False},
                   "seeds": seed_list, "cache_dir": f"/cache/{seed_list[0]}"},
    }


def _write(root: pathlib.Path, name: str, results: dict | None) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    # PAL-A: three runs of one seed each (a seed sweep) -> mean and std over the three.
    for seed, seen, k1, k5 in [(0, 0.90, 0.70, 0.80), (1, 0.92, 0.74, 0.84), (2, 0.88, 0.72, 0.83)]:
        _write(root, f"pal_a/seed={seed}", _results("pal_a", [seed], seen, {1: k1, 5: k5}))
    # BT: one run that trained three seeds in one program -> its own mean ± std, untouched.
    _write(root, "bt/seeds=[0,1,2]", _results("bt", [0, 1, 2], 0.70, {1: 0.69, 5: 0.69}, seen_std=0.004))
    # BT with another learning rate: a different row (variant), not averaged with the first.
    _write(root, "bt/lr", _results("bt", [0], 0.60, {1: 0.61, 5: 0.61}, lr=0.1))
    # A job that failed: listed as incomplete, not counted.
    _write(root, "pal_a/seed=3", None)
    return root


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_tables_carry_exactly_the_numbers_of_the_results_files(sweep):
    paths = write_report(sweep)
    rows = {(r["model"], r["variant"]): r for r in _rows(paths["csv"])}
    assert set(rows) == {("bt", "train.learning_rate=0.003"), ("bt", "train.learning_rate=0.1"), ("pal_a", "")}

    pal = rows[("pal_a", "")]
    assert int(pal["runs"]) == 3 and int(pal["seeds"]) == 3
    assert float(pal["seen_accuracy"]) == np.mean([0.90, 0.92, 0.88])
    assert float(pal["seen_accuracy_std"]) == np.std([0.90, 0.92, 0.88])
    assert float(pal["unseen_random_k5"]) == np.mean([0.80, 0.84, 0.83])
    assert float(pal["unseen_item_disjoint_k1"]) == np.mean([0.70 - 0.05, 0.74 - 0.05, 0.72 - 0.05])

    bt = rows[("bt", "train.learning_rate=0.003")]
    assert float(bt["seen_accuracy"]) == 0.70 and float(bt["seen_accuracy_std"]) == 0.004
    assert float(bt["unseen_random_k1"]) == 0.69 and float(bt["unseen_random_k1_std"]) == 0.01
    assert float(rows[("bt", "train.learning_rate=0.1")]["seen_accuracy"]) == 0.60

    md = paths["markdown"].read_text()
    assert "| pal_a | ideal_point |  | 3 | 0.900 ± 0.016 | 0.720 ± 0.016 | 0.823 ± 0.017 | 0.773 ± 0.017 | 0.930 | 0.740 |" in md
    assert "0.700 ± 0.004" in md
    assert "Incomplete runs" in md and "seed=3" in md


def test_figures_are_written(sweep):
    paths = write_report(sweep, sweep / "elsewhere")
    for kind in ("kshot_random", "kshot_item_disjoint", "per_user"):
        png = paths[kind]
        assert png.parent == sweep / "elsewhere"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_training_curves_from_metrics_jsonl_and_rounded_labels(sweep):
    from pluralign.evaluate.report import _label, read_metrics

    job = sweep / "bt" / "lr"
    (job / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_loss": [1.0 / (e + 1)], "val_loss": [1.1 / (e + 1)], "val_accuracy": [0.6]}) + "\n"
        for e in range(4)
    ))
    assert [r["epoch"] for r in read_metrics(job)] == [0, 1, 2, 3]
    paths = write_report(sweep)
    assert paths["training_curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _label({"model": "bt", "variant": "train.learning_rate=0.30000000000000004"}) == "bt [train.learning_rate=0.3]"


def test_runs_differing_only_in_seed_and_paths_are_one_row(sweep):
    groups = group_runs([json.loads(p.read_text()) for p in sweep.rglob("results.json")])
    assert sorted((g["model"], len(g["runs"])) for g in groups) == [("bt", 1), ("bt", 1), ("pal_a", 3)]


def test_report_command_prints_the_table_and_writes_the_files(sweep, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pluralign", "report", str(sweep)])
    cli.main()
    out = capsys.readouterr().out
    assert "pal_a" in out and str(sweep / "report" / "results.csv") in out
    # The console table names what differs between rows: the swept learning rate, and the seed
    # of each single-seed run; the failed job is flagged.
    assert "train.learning_rate=0.1" in out and "train.learning_rate=0.003" in out and "seeds=[2]" in out
    assert "incomplete jobs" in out and "seed=3" in out
    assert (sweep / "report" / "kshot_random.png").exists()


def test_report_on_a_directory_without_results_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete results.json"):
        write_report(tmp_path)
