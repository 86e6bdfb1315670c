"""Metrics of predicted preference probabilities, on host numpy arrays (docs/design/evaluation-protocol.md).

All take logits z of P(a ≻ b), (soft) labels y ∈ [0, 1] and weights w. A comparison
with y = 0.5 has no correct side and is left out of accuracy (not of log-loss).
"""

from __future__ import annotations

import numpy as np

# Why a metric can be undefined on some data. It is NaN in memory and null in results.json,
# which names the reason under "undefined" (`pluralign.run.write_results`).
UNDEFINED_BECAUSE = {
    "accuracy": "no comparison with a decided label (every label is 0.5, or every weight is 0)",
    "log_loss": "every comparison has weight 0",
    "ece": "every comparison has weight 0",
    "per_user": "no user has a comparison with a decided label",
}


def _decided(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weights * (labels != 0.5)


def accuracy(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """NaN (undefined, not 0) when no comparison has a decided label and a positive weight."""
    w = _decided(labels, weights)
    total = np.sum(w)
    return float(np.sum(((logits > 0) == (labels > 0.5)) * w) / total) if total > 0 else float("nan")


def log_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    # −[y log σ(z) + (1 − y) log σ(−z)], with log σ(z) = −log(1 + e^{−z}) computed stably.
    nll = labels * np.logaddexp(0.0, -logits) + (1.0 - labels) * np.logaddexp(0.0, logits)
    total = np.sum(weights)
    return float(np.sum(nll * weights) / total) if total > 0 else float("nan")


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_bins: int = 15) -> float:
    """ECE over the predicted side: confidence max(p, 1 − p) against how often that side won."""
    p = 1.0 / (1.0 + np.exp(-logits))
    confidence = np.maximum(p, 1.0 - p)
    # The predicted side's empirical win rate: y if we predicted a, 1 − y otherwise (soft labels work too).
    outcome = np.where(p >= 0.5, labels, 1.0 - labels)
    bins = np.minimum(((confidence - 0.5) * 2 * n_bins).astype(int), n_bins - 1)
    total = np.sum(weights)
    if not total > 0:
        return float("nan")
    ece = 0.0
    for k in range(n_bins):
        w = weights * (bins == k)
        mass = np.sum(w)
        if mass > 0:
            ece += mass / total * abs(np.sum(w * outcome) / mass - np.sum(w * confidence) / mass)
    return float(ece)


def per_user_accuracy(logits, labels, weights, users) -> np.ndarray:
    """Accuracy of each user that has at least one decided comparison, in user-id order."""
    w = _decided(labels, weights)
    ids, inverse = np.unique(users, return_inverse=True)
    correct = np.bincount(inverse, weights=((logits > 0) == (labels > 0.5)) * w, minlength=len(ids))
    total = np.bincount(inverse, weights=w, minlength=len(ids))
    return correct[total > 0] / total[total > 0]


def summary(logits, labels, weights, users, user_group: np.ndarray | None = None) -> dict:
    """Accuracy, log-loss, ECE, the per-user accuracy distribution and, with known groups, the worst group."""
    per_user = per_user_accuracy(logits, labels, weights, users)
    out = {
        "accuracy": accuracy(logits, labels, weights),
        "log_loss": log_loss(logits, labels, weights),
        "ece": expected_calibration_error(logits, labels, weights),
        "per_user": {
            "mean": float(per_user.mean()) if len(per_user) else float("nan"),
            "p10": float(np.percentile(per_user, 10)) if len(per_user) else float("nan"),
            "n_users": int(len(per_user)),
        },
        "n_pairs": int(np.sum(weights > 0)),
    }
    if user_group is not None:
        groups = user_group[users]
        by_group = {
            int(g): accuracy(logits[groups == g], labels[groups == g], weights[groups == g])
            for g in np.unique(groups)
        }
        out["group_accuracy"] = by_group
        defined = [a for a in by_group.values() if not np.isnan(a)]
        out["worst_group_accuracy"] = min(defined) if defined else float("nan")
    return out


def per_user_sums(logits, labels, weights, users, ids: np.ndarray) -> dict:
    """Per-user sums over one set of comparisons, for the users `ids` (zeros for a user with
    none): `n` decided weight, `correct` weight of correctly decided pairs, `weight` all pairs'
    weight and `log_loss_sum` their weighted log-loss. Sums add up across episodes, so pooled
    statistics and bootstrap intervals over users are computed from them exactly."""
    position = np.searchsorted(ids, users)
    position = np.where((position < len(ids)) & (ids[np.minimum(position, len(ids) - 1)] == users), position, len(ids))
    decided = _decided(labels, weights)
    nll = labels * np.logaddexp(0.0, -logits) + (1.0 - labels) * np.logaddexp(0.0, logits)
    sums = lambda x: np.bincount(position, weights=x, minlength=len(ids) + 1)[: len(ids)]  # noqa: E731
    return {
        "n": sums(decided),
        "correct": sums(((logits > 0) == (labels > 0.5)) * decided),
        "weight": sums(np.asarray(weights, np.float64)),
        "log_loss_sum": sums(nll * weights),
    }


def bootstrap_ratio_interval(numerator, denominator, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval over users of Σ numerator / Σ denominator.

    With numerator = a user's correct pairs and denominator = their decided pairs this is the
    interval of pooled accuracy; with numerator = correct_model − correct_baseline on the same
    queries, of the paired accuracy difference. Users are resampled with replacement (a fixed
    seed, so a report is reproducible). Returns (low, high), or (None, None) without users.
    """
    return bootstrap_ratio_intervals(numerator, denominator, (level,), n_resamples=n_resamples, seed=seed)[0]


def bootstrap_ratio_intervals(numerator, denominator, levels, *, n_resamples: int = 1000, seed: int = 0) -> list:
    """`bootstrap_ratio_interval` at each of `levels`, from one resampling: [(low, high), ...]."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    keep = denominator > 0
    numerator, denominator = numerator[keep], denominator[keep]
    if len(denominator) == 0:
        return [(None, None)] * len(levels)
    index = np.random.default_rng(seed).integers(0, len(denominator), size=(n_resamples, len(denominator)))
    ratios = numerator[index].sum(axis=1) / denominator[index].sum(axis=1)
    tails = [100 * (1 - level) / 2 for level in levels]
    return [(float(low), float(high)) for low, high in (np.percentile(ratios, [t, 100 - t]) for t in tails)]


def mean_over_runs(runs: list[dict]) -> dict:
    """`summary` results of several runs (training seeds, or seed × draw episodes) in one:
    the mean of accuracy, log_loss, ece, per_user_mean, per_user_p10 and, with known groups,
    worst_group_accuracy, and accuracy_std, the spread of accuracy over the runs."""
    mean = lambda get: float(np.mean([get(r) for r in runs]))  # noqa: E731
    out = {
        "accuracy": mean(lambda r: r["accuracy"]),
        "accuracy_std": float(np.std([r["accuracy"] for r in runs])),
        "log_loss": mean(lambda r: r["log_loss"]),
        "ece": mean(lambda r: r["ece"]),
        "per_user_mean": mean(lambda r: r["per_user"]["mean"]),
        "per_user_p10": mean(lambda r: r["per_user"]["p10"]),
    }
    if "worst_group_accuracy" in runs[0]:
        out["worst_group_accuracy"] = mean(lambda r: r["worst_group_accuracy"])
    return out
