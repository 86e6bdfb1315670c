"""Which k a few-shot curve reports: only those that most users can be scored at."""

from __future__ import annotations

import jax
import numpy as np

from pluralign.data import Comparisons
from pluralign.evaluate import fewshot
from pluralign.models import BT, BTConfig, Dims
from pluralign.models.base import Tables
from pluralign.train.trainer import init_params


def test_a_k_that_only_a_minority_of_users_reach_is_not_reported():
    rng = np.random.default_rng(0)
    # Users 0-2 have 40 comparisons (pool 20), users 3-9 have 10 (pool 5).
    counts = np.array([40, 40, 40] + [10] * 7)
    user = np.repeat(np.arange(10), counts)
    a = rng.integers(0, 50, len(user))
    comparisons = Comparisons.from_arrays(user=user, a=a, b=(a + 1) % 50, label=rng.integers(0, 2, len(user)))
    graphdef, params = init_params(BT, BTConfig(hidden=[4]), Dims(dim=4, n_users=10), jax.random.PRNGKey(0)[None])
    tables = Tables(items=jax.random.normal(jax.random.PRNGKey(1), (50, 4)), prompts=np.zeros((1, 4), np.float32))
    adapt = fewshot.make_adapt_and_predict(graphdef, steps=1, learning_rate=0.1)

    def curve(min_user_fraction):
        return fewshot.evaluate_unseen(
            adapt, params, tables, comparisons, np.arange(10), shots=[1, 5, 20], mode="random", seeds=[0], draws=1,
            prior_strength=1.0, seen_users=np.arange(10), min_user_fraction=min_user_fraction,
        )

    majority = curve(0.5)
    assert sorted(majority) == [1, 5]
    assert majority[5]["n_users"] == 10
    everyone = curve(0.0)
    assert sorted(everyone) == [1, 5, 20] and everyone[20]["n_users"] == 3


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
