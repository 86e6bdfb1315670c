"""Small user splits: a run warns when few users are held out, and reports show no interval
over users below `MIN_USERS_FOR_INTERVAL`, saying why (issue: a 12-user table printed a "95% CI
over users" and a Δ vs BT interval bootstrapped over 2 users)."""

from __future__ import annotations

import io
import json
import pathlib

import pytest
from rich.console import Console

from pluralign.data.splits import split_users
from pluralign.evaluate.report import print_results, write_report
from pluralign.evaluate.sample_size import MIN_USERS, MIN_USERS_FOR_INTERVAL, split_warnings, too_few_for_interval


def _counts(n_users: int) -> dict:
    split = split_users(n_users, seed=0)  # the default 70/10/20 split
    return {"unseen_val": len(split.unseen_val), "unseen_test": len(split.unseen_test)}


def test_twelve_users_under_the_default_split_warn_about_both_held_out_parts():
    counts = _counts(12)
    assert counts == {"unseen_val": 1, "unseen_test": 2}
    warnings = split_warnings(counts)
    assert len(warnings) == 2
    assert any("only 2 unseen-test user(s)" in w and "eval.unseen_test_fraction" in w for w in warnings)
    assert any("only 1 unseen-val user(s)" in w and "no interval over users" in w for w in warnings)


def test_enough_users_warn_about_nothing():
    counts = _counts(200)
    assert min(counts.values()) >= MIN_USERS
    assert split_warnings(counts) == []
    assert split_warnings({"unseen_val": 0, "unseen_test": 0}) == []  # eval=deploy holds out no one on purpose


def test_the_interval_threshold():
    assert too_few_for_interval(MIN_USERS_FOR_INTERVAL - 1) is not None
    assert too_few_for_interval(MIN_USERS_FOR_INTERVAL) is None
    assert too_few_for_interval(None) is None


def _results(model: str, accuracy: float, correct: list[float], n_users_split: dict) -> dict:
    """A results.json as `pluralign.run` writes it, unseen-test figures on len(correct) users."""
    users = list(range(len(correct)))
    entry = {"accuracy": accuracy, "accuracy_std": 0.042, "n_episodes": 4, "n_users": len(users), "n_query_pairs": 12,
             "episodes": "random5", "per_user": {"user": users, "n": [6.0] * len(users), "correct": correct,
                                                 "weight": [6.0] * len(users), "log_loss_sum": [3.0] * len(users)}}
    return {
        "status": "complete", "model": model, "dataset": "mine", "seeds": [0],
        "seen": {"accuracy": 0.722, "accuracy_std": None},
        "unseen": {"mode": "random", "accuracy_at_k": {"5": accuracy}, "accuracy_std_at_k": {"5": 0.042},
                   "by_mode": {"random": {"5": entry}}},
        "n_users": {"seen": 9, **n_users_split},
        "warnings": split_warnings(n_users_split),
        "wall_seconds": 3.0, "config": {"model": {"name": model}, "data": {"name": "mine"}},
    }


def _sweep(root: pathlib.Path, n_users: int) -> pathlib.Path:
    split = {"unseen_val": 1, "unseen_test": n_users}
    for model, correct in (("pal_a", [6.0, 5.0] * (n_users // 2)), ("bt", [3.0, 3.0] * (n_users // 2))):
        accuracy = sum(correct) / (6.0 * len(correct))
        (root / model).mkdir(parents=True)
        (root / model / "results.json").write_text(json.dumps(_results(model, accuracy, correct, split)))
    return root


def test_report_on_two_users_shows_no_interval_and_says_why(tmp_path):
    root = _sweep(tmp_path / "sweep", n_users=2)
    paths = write_report(root, latex=True)
    md = pathlib.Path(paths["markdown"]).read_text()
    assert "\\pm" not in pathlib.Path(paths["latex"]).read_text()
    assert "**Warnings**" in md and "only 2 unseen-test user(s)" in md and "only 1 unseen-val user(s)" in md
    pal = next(line for line in md.splitlines() if line.startswith("| pal_a | mine |"))
    assert "0.917 (2 users)" in pal and "±" not in pal.split("|")[5]  # the unseen figure: no spread
    assert "+0.417 (no CI: 2 users)" in pal and "[" not in pal  # Δ vs BT without an interval
    detail = [line for line in md.splitlines() if line.startswith("| pal_a | mine | random | 5 |")]
    assert detail and "no interval: 2 user(s)" in detail[0] and "[" not in detail[0]
    csv_text = (root / "report" / "results.csv").read_text()
    assert "unseen_random_k5_ci_low" not in csv_text and "unseen_random_k5_no_interval" in csv_text

    out = io.StringIO()
    print_results(root, Console(file=out, width=250))
    text = out.getvalue()
    assert "0.917 (2 users)" in text and "0.917 ±" not in text
    assert "warning" in text and "only 2 unseen-test user(s)" in text


def test_report_on_enough_users_keeps_its_intervals(tmp_path):
    root = _sweep(tmp_path / "sweep", n_users=MIN_USERS)
    md = pathlib.Path(write_report(root)["markdown"]).read_text()
    pal = next(line for line in md.splitlines() if line.startswith("| pal_a | mine |"))
    assert "± 0.042" in pal and "+0.417 [" in pal
    assert "only 1 unseen-val user(s)" in md  # still warned: one unseen-val user
    assert "unseen-test user(s)" not in md
