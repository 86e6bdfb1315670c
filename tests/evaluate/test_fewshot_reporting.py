"""Which k a few-shot curve reports: only those that most users can be scored at."""

from __future__ import annotations

import jax
import numpy as np

from pluralign.data import Comparisons
from pluralign.evaluate import fewshot
from pluralign.models import BT, BTConfig, Dims
from pluralign.models.base import Tables
from pluralign.train.trainer import init_params


def panel(counts, seed=0):
    """Users with the given numbers of comparisons, no comparison repeated within a user."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(len(counts)), counts)
    a = np.concatenate([rng.permutation(50)[:n] for n in counts])
    return Comparisons.from_arrays(user=user, a=a, b=(a + 1) % 50, label=rng.integers(0, 2, len(user)))


def bt_curve(comparisons, n_users, *, shots, min_user_fraction=0.5, seeds=(0,), draws=1, mode="random"):
    graphdef, params = init_params(BT, BTConfig(hidden=[4]), Dims(dim=4, n_users=n_users),
                                   jax.vmap(jax.random.PRNGKey)(np.array(seeds)))
    tables = Tables(items=jax.random.normal(jax.random.PRNGKey(1), (50, 4)), prompts=np.zeros((1, 4), np.float32))
    adapt = fewshot.make_adapt_and_predict(graphdef, steps=1, learning_rate=0.1)
    return fewshot.evaluate_unseen(
        adapt, params, tables, comparisons, np.arange(n_users), shots=shots, mode=mode, seeds=list(seeds), draws=draws,
        prior_strength=1.0, seen_users=np.arange(n_users), min_user_fraction=min_user_fraction,
    )


def test_a_k_that_only_a_minority_of_users_reach_is_kept_with_its_reason():
    # Users 0-2 have 40 comparisons (pool 20), users 3-9 have 10 (pool 5).
    comparisons = panel([40, 40, 40] + [10] * 7)
    majority = bt_curve(comparisons, 10, shots=[1, 5, 20])
    assert sorted(majority) == [1, 5, 20]
    assert majority[5]["n_users"] == 10 and majority[5]["n_users_total"] == 10
    assert majority[5]["n_query_pairs"] == 3 * 20 + 7 * 5
    assert majority[20]["accuracy"] is None and majority[20]["n_users"] == 0
    assert majority[20]["reason"].startswith("k=20: at most 3 of 10 users have 20 support pairs")
    everyone = bt_curve(comparisons, 10, shots=[1, 5, 20], min_user_fraction=0.0)
    assert everyone[20]["accuracy"] is not None and everyone[20]["n_users"] == 3


def test_the_largest_k_enough_users_reach_is_added_when_the_largest_requested_is_out_of_reach():
    comparisons = panel([30] * 6 + [16] * 4)  # pools: 15 for six users, 8 for four
    curve = bt_curve(comparisons, 10, shots=[1, 20])
    assert sorted(curve) == [1, 15, 20]
    assert curve[20]["accuracy"] is None
    assert curve[15]["largest_available"] and curve[15]["n_users"] == 6 and "largest_available" not in curve[1]


def test_the_spread_says_over_how_many_episodes_and_one_episode_has_none():
    comparisons = panel([20] * 8)
    one = bt_curve(comparisons, 8, shots=[1, 5])
    assert one[5]["n_episodes"] == 1 and one[5]["accuracy_std"] is None
    many = bt_curve(comparisons, 8, shots=[1, 5], seeds=(0, 1), draws=2)
    assert many[5]["n_episodes"] == 4 and many[5]["accuracy_std"] > 0


def test_per_user_sums_and_the_interval_over_users():
    """The stored per-user sums pool every episode; the interval is the percentile bootstrap over
    users of the pooled accuracy, recomputed here directly with numpy."""
    comparisons = panel([20] * 12)
    curve = bt_curve(comparisons, 12, shots=[5], seeds=(0, 1), draws=2)[5]
    per_user = curve["per_user"]
    assert per_user["user"] == list(range(12)) and sum(per_user["n"]) == 4 * curve["n_query_pairs"]
    n, correct = np.array(per_user["n"]), np.array(per_user["correct"])
    rng = np.random.default_rng(0)
    resampled = [correct[i].sum() / n[i].sum() for i in rng.integers(0, 12, size=(1000, 12))]
    np.testing.assert_allclose(curve["ci95"], np.percentile(resampled, [2.5, 97.5]))
    assert curve["ci95"][0] < correct.sum() / n.sum() < curve["ci95"][1]
    assert curve["vs_zero_shot"]["difference"] == 0.0  # BT has no user state: k shots = 0 shots


def test_bad_eval_configs_fail_before_training():
    import pytest

    from pluralign.evaluate.fewshot import EvalConfig

    for bad in (dict(shots=[0, 5]), dict(modes=["randm"]), dict(draws=0), dict(prior_strengths=[])):
        with pytest.raises(ValueError, match="eval\\."):
            EvalConfig(**bad)


def test_no_unseen_users_gives_an_empty_curve():
    graphdef, params = init_params(BT, BTConfig(hidden=[4]), Dims(dim=4, n_users=2), jax.random.PRNGKey(0)[None])
    comparisons = Comparisons.from_arrays(user=[0, 1], a=[0, 1], b=[1, 0], label=[1.0, 0.0])
    tables = Tables(items=np.ones((2, 4), np.float32), prompts=np.zeros((1, 4), np.float32))
    curve = fewshot.evaluate_unseen(
        fewshot.make_adapt_and_predict(graphdef, steps=1, learning_rate=0.1), params, tables, comparisons,
        np.zeros(0, np.int64), shots=[1], mode="random", seeds=[0], draws=1, prior_strength=1.0, seen_users=np.arange(2),
    )
    assert curve == {}
