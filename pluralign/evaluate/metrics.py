"""Metrics of predicted preference probabilities, on host numpy arrays (DESIGN §6).

All take logits z of P(a ≻ b), (soft) labels y ∈ [0, 1] and weights w. A comparison
with y = 0.5 has no correct side and is left out of accuracy (not of log-loss).
"""

from __future__ import annotations

import numpy as np


def _decided(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weights * (labels != 0.5)


def accuracy(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    w = _decided(labels, weights)
    return float(np.sum(((logits > 0) == (labels > 0.5)) * w) / max(np.sum(w), 1e-12))


def log_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    # −[y log σ(z) + (1 − y) log σ(−z)], with log σ(z) = −log(1 + e^{−z}) computed stably.
    nll = labels * np.logaddexp(0.0, -logits) + (1.0 - labels) * np.logaddexp(0.0, logits)
    return float(np.sum(nll * weights) / max(np.sum(weights), 1e-12))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_bins: int = 15) -> float:
    """ECE over the predicted side: confidence max(p, 1 − p) against how often that side won."""
    p = 1.0 / (1.0 + np.exp(-logits))
    confidence = np.maximum(p, 1.0 - p)
    # The predicted side's empirical win rate: y if we predicted a, 1 − y otherwise (soft labels work too).
    outcome = np.where(p >= 0.5, labels, 1.0 - labels)
    bins = np.minimum(((confidence - 0.5) * 2 * n_bins).astype(int), n_bins - 1)
    total = max(np.sum(weights), 1e-12)
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
        out["worst_group_accuracy"] = min(by_group.values())
    return out
