"""Metrics of predicted preferences against hand computations and naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pluralign.evaluate import metrics


def test_accuracy_soft_labels_and_ties():
    z = np.array([1.0, -1.0, 2.0, -0.5, 3.0, 0.2])
    y = np.array([0.8, 0.3, 0.5, 0.6, 0.0, 0.5])
    w = np.array([1.0, 1.0, 1.0, 2.0, 0.0, 5.0])
    # row 0: predicts a, y > ½ → right; row 1: predicts b, y < ½ → right; rows 2, 5: y = ½, no
    # correct side, left out; row 3: predicts b, y > ½ → wrong, weight 2; row 4: weight 0.
    assert metrics.accuracy(z, y, w) == pytest.approx(2.0 / 4.0)


def test_accuracy_of_only_ties_is_undefined():
    # No comparison has a correct side: accuracy is undefined (NaN; null in results.json), not 0.0.
    assert np.isnan(metrics.accuracy(np.array([1.0, -1.0]), np.array([0.5, 0.5]), np.ones(2)))


def test_log_loss_hand_computation():
    z = np.array([2.0, -1.0, 0.0, 40.0])
    y = np.array([1.0, 0.25, 0.5, 0.0])
    w = np.array([1.0, 3.0, 2.0, 0.5])
    terms = []
    for zi, yi in zip(z, y):
        p = 1.0 / (1.0 + math.exp(-zi))
        # log(1 − p) for z = 40 underflows in this naive form; use −z − log(1 + e^{−z}) there.
        log_q = math.log(1.0 - p) if zi < 30 else -zi - math.log1p(math.exp(-zi))
        terms.append(-(yi * math.log(p) + (1.0 - yi) * log_q))
    expected = sum(wi * t for wi, t in zip(w, terms)) / w.sum()
    assert metrics.log_loss(z, y, w) == pytest.approx(expected, rel=1e-9)


def test_log_loss_is_finite_for_confident_mistakes():
    value = metrics.log_loss(np.array([1000.0, -1000.0]), np.array([0.0, 1.0]), np.ones(2))
    assert value == pytest.approx(1000.0)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_ece_of_calibrated_predictions_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, size=200_000)
    labels = (rng.random(p.shape) < p).astype(np.float64)
    assert metrics.expected_calibration_error(_logit(p), labels, np.ones_like(p)) < 0.01


def test_ece_of_exact_soft_labels_is_zero():
    p = np.random.default_rng(1).uniform(0.01, 0.99, size=1000)
    assert metrics.expected_calibration_error(_logit(p), p, np.ones_like(p)) == pytest.approx(0.0, abs=1e-9)


def test_ece_of_overconfident_predictions_is_large():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, size=200_000)
    labels = (rng.random(p.shape) < p).astype(np.float64)
    ece = metrics.expected_calibration_error(5.0 * _logit(p), labels, np.ones_like(p))
    assert ece > 0.15
    # Independent estimate of the same miscalibration: mean confidence minus mean hit rate.
    q = 1.0 / (1.0 + np.exp(-5.0 * _logit(p)))
    gap = np.mean(np.maximum(q, 1 - q)) - np.mean(np.where(q >= 0.5, p, 1 - p))
    assert ece == pytest.approx(gap, abs=0.02)


def test_ece_ignores_zero_weight_rows():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.95, size=500)
    z, y = _logit(p), p.copy()
    w = np.ones_like(p)
    w[:100] = 0.0
    y_bad = y.copy()
    y_bad[:100] = 1.0 - y_bad[:100]  # garbage on weight-0 rows
    assert metrics.expected_calibration_error(z, y_bad, w) == pytest.approx(
        metrics.expected_calibration_error(z[100:], y[100:], w[100:]), abs=1e-12
    )


def _random_predictions(seed=0, n=400):
    rng = np.random.default_rng(seed)
    users = rng.choice([3, 7, 8, 20, 41], size=n)
    z = rng.standard_normal(n)
    y = rng.choice([0.0, 1.0, 0.5, 0.8], size=n)
    y[users == 20] = 0.5  # a user with no decided comparison
    w = rng.uniform(0.0, 2.0, size=n)
    return z, y, w, users


def test_per_user_accuracy_matches_a_naive_loop():
    z, y, w, users = _random_predictions()
    expected = []
    for u in sorted(set(users.tolist())):
        num = den = 0.0
        for zi, yi, wi, ui in zip(z, y, w, users):
            if ui == u and yi != 0.5:
                num += wi * ((zi > 0) == (yi > 0.5))
                den += wi
        if den > 0:
            expected.append(num / den)
    got = metrics.per_user_accuracy(z, y, w, users)
    assert len(got) == 4  # user 20 has only ties
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_summary_groups_and_counts():
    z, y, w, users = _random_predictions(seed=1)
    user_group = np.zeros(42, int)
    user_group[[7, 41]] = 1
    out = metrics.summary(z, y, w, users, user_group)
    in_group_1 = np.isin(users, [7, 41])
    g0 = metrics.accuracy(z[~in_group_1], y[~in_group_1], w[~in_group_1])
    g1 = metrics.accuracy(z[in_group_1], y[in_group_1], w[in_group_1])
    assert out["group_accuracy"] == pytest.approx({0: g0, 1: g1})
    assert out["worst_group_accuracy"] == pytest.approx(min(g0, g1))
    assert out["n_pairs"] == int(np.sum(w > 0))
    assert out["per_user"]["n_users"] == 4
    assert out["accuracy"] == pytest.approx(metrics.accuracy(z, y, w))
