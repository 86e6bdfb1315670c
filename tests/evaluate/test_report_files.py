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
        mode: {str(k): {"accuracy": acc + (0.0 if mode == "random" else -0.05), "accuracy_std": 0.01, "n_episodes": 2,
                        "n_users": 10, "n_query_pairs": 100, "episodes": f"{mode}{k}{seed_list}",
                        "per_user": per_user(acc + (0.0 if mode == "random" else -0.05))}
               for k, acc in unseen.items()}
        for mode in ("random", "item_disjoint")
    }
    by_mode["random"]["20"] = {"accuracy": None, "n_users": 0, "n_users_total": 10,
                               "reason": "k=20: at most 2 of 10 users have 20 support pairs and a query in an episode"}
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


def per_user(accuracy, n_users=10, n=10):
    """Per-user sums whose pooled accuracy is `accuracy`: users' correct counts spread around it."""
    correct = np.clip(np.round(accuracy * n + np.linspace(-2, 2, n_users)), 0, n)
    correct[0] += round(accuracy * n * n_users) - correct.sum()
    return {"user": list(range(n_users)), "n": [float(n)] * n_users, "correct": correct.tolist(),
            "weight": [float(n)] * n_users, "log_loss_sum": [5.0] * n_users}


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
    assert "| pal_a | ideal_point |  | 3 | 0.900 ± 0.016 | 0.720 ± 0.016 | 0.823 ± 0.017 | 0.773 ± 0.017 |" in md
    # Every (mode, k) in the detailed table with what the ± is over, its counts, or why it is missing.
    assert "| bt | ideal_point | train.learning_rate=0.003 | random | 5 | 0.690 ± 0.010 | 2 seed×draw episodes |" in md
    assert "k=20: at most 2 of 10 users have 20 support pairs" in md
    assert "0.700 ± 0.004" in md
    assert "Incomplete runs" in md and "seed=3" in md


def test_figures_are_written(sweep):
    paths = write_report(sweep, sweep / "elsewhere")
    for kind in ("kshot_random", "kshot_item_disjoint", "per_user"):
        png = paths[kind]
        assert png.parent == sweep / "elsewhere"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_training_curves_from_metrics_jsonl_and_rounded_labels(sweep):
    from pluralign.evaluate.report import read_metrics, run_label

    job = sweep / "bt" / "lr"
    (job / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_loss": [1.0 / (e + 1)], "val_loss": [1.1 / (e + 1)], "val_accuracy": [0.6]}) + "\n"
        for e in range(4)
    ))
    assert [r["epoch"] for r in read_metrics(job)] == [0, 1, 2, 3]
    paths = write_report(sweep)
    assert paths["training_curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_label({"model": "bt", "variant": "train.learning_rate=0.30000000000000004"}) == "bt [train.learning_rate=0.3]"


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


def test_intervals_over_users_and_the_paired_difference_to_bt(sweep):
    """The CI is the bootstrap over users of the pooled accuracy, and Δ vs BT pairs each user's
    correct counts on the same queries (same episode fingerprints); recomputed here with numpy."""
    # A single-seed PAL-A run whose episodes are those of the single-seed BT run.
    _write(sweep, "pal_a/lr", _results("pal_a", [0], 0.95, {1: 0.75, 5: 0.86}, lr=0.1))
    rows = {(r["model"], r["variant"]): r for r in _rows(write_report(sweep)["csv"])}
    pal, bt = rows[("pal_a", "train.learning_rate=0.1")], rows[("bt", "train.learning_rate=0.1")]
    c_pal, c_bt = (np.array(per_user(a)["correct"]) for a in (0.86, 0.61))
    rng = np.random.default_rng(0)
    index = rng.integers(0, 10, size=(1000, 10))
    np.testing.assert_allclose(
        [float(pal["unseen_random_k5_ci_low"]), float(pal["unseen_random_k5_ci_high"])],
        np.percentile(c_pal[index].sum(1) / 100, [2.5, 97.5]))
    assert float(pal["unseen_random_k5_vs_bt"]) == pytest.approx((c_pal - c_bt).sum() / 100)
    np.testing.assert_allclose(
        [float(pal["unseen_random_k5_vs_bt_low"]), float(pal["unseen_random_k5_vs_bt_high"])],
        np.percentile((c_pal - c_bt)[index].sum(1) / 100, [2.5, 97.5]))
    assert bt["unseen_random_k5_vs_bt"] == ""  # BT itself has no difference
    # The 3-seed PAL-A runs have other episodes than any BT run: no pairing, no difference.
    assert rows[("pal_a", "train.learning_rate=0.003")]["unseen_random_k5_vs_bt"] == ""
    assert rows[("pal_a", "train.learning_rate=0.003")]["unseen_random_k5_std_over"] == "3 runs"


def test_latex_table_marks_the_best_of_each_column(sweep):
    tex = write_report(sweep, latex=True)["latex"].read_text()
    assert tex.startswith("\\begin{tabular}") and "\\bottomrule" in tex
    assert "pal\\_a & ideal\\_point & $\\mathbf{0.900 \\pm 0.016}$" in tex  # best seen accuracy
    assert "$0.700 \\pm 0.004}$" not in tex and "$0.700 \\pm 0.004$" in tex


def test_a_missing_cell_of_the_main_table_says_why(tmp_path):
    root = tmp_path / "multirun"
    _write(root, "pal_a", _results("pal_a", [0], 0.9, {1: 0.7, 5: 0.8}))
    sparse = _results("bt", [0], 0.7, {1: 0.69, 5: 0.69})
    sparse["unseen"]["by_mode"]["random"]["5"] = {"accuracy": None, "n_users": 0, "n_users_total": 10,
                                                  "reason": "k=5: at most 4 of 10 users have 5 support pairs"}
    _write(root, "bt", sparse)
    md = write_report(root)["markdown"].read_text()
    assert "| bt | ideal_point | 1 | 0.700 | 0.690 ± 0.010 | — |" in md
    assert "- bt, random k=5: k=5: at most 4 of 10 users have 5 support pairs" in md
