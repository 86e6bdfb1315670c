"""The shared-plus-low-rank generator: a dominant shared reward, Gaussian personal deviations in a
few directions, user-varying noise, items reused across users; its ceilings and a BT run on it."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.data.low_rank import SharedPlusLowRankConfig, make_shared_plus_low_rank
from pluralign.data.sources import GENERATORS, load_dataset

SMALL = dict(n_users=150, n_items=120, items_per_user=20, comparisons_per_user=30, dim=12, rank=2)


def test_shapes_and_items_reused_from_a_common_pool():
    ds = make_shared_plus_low_rank(SharedPlusLowRankConfig(**SMALL))
    c = ds.comparisons
    assert ds.items.shape == (120, 12) and ds.prompts is None and len(c) == 150 * 30
    np.testing.assert_array_equal(np.bincount(c.user), np.full(150, 30))
    assert np.all(c.a != c.b) and set(np.unique(c.label)) <= {0.0, 1.0}
    truth = ds.meta["truth"]
    assert np.shape(truth["user_weights"]) == (150, 2) and len(truth["user_sharpness"]) == 150
    per_user = [np.union1d(c.a[c.user == u], c.b[c.user == u]) for u in range(150)]
    assert max(len(items) for items in per_user) <= 20            # each user sees items_per_user items ...
    users_per_item = np.bincount(np.concatenate(per_user), minlength=120)
    assert users_per_item.min() >= 5                               # ... from a pool every item of which is shared
    assert 0.4 < c.label.mean() < 0.6                              # a/b order carries no information


def test_ceilings_are_ordered_and_the_shared_part_dominates():
    truth = make_shared_plus_low_rank(SharedPlusLowRankConfig(**SMALL)).meta["truth"]
    bayes, population = truth["bayes_optimal_accuracy"], truth["population_optimal_accuracy"]
    assert bayes > population + 0.05 and population > 0.7           # Bayes > best non-personal >> 0.5
    # No personal deviation and equal noise: nothing to personalize, the two ceilings coincide.
    flat = make_shared_plus_low_rank(SharedPlusLowRankConfig(**{**SMALL, "deviation_scale": 0.0,
                                                               "sharpness_spread": 0.0})).meta["truth"]
    assert flat["bayes_optimal_accuracy"] == pytest.approx(flat["population_optimal_accuracy"])
    # No shared reward: users' tastes cancel out, the best non-personal predictor is near chance.
    split = make_shared_plus_low_rank(SharedPlusLowRankConfig(**{**SMALL, "shared_scale": 0.0})).meta["truth"]
    assert split["population_optimal_accuracy"] < 0.6 < split["bayes_optimal_accuracy"]


def test_sharpness_varies_label_noise_by_user():
    ds = make_shared_plus_low_rank(SharedPlusLowRankConfig(**{**SMALL, "sharpness_spread": 1.0}))
    beta = np.asarray(ds.meta["truth"]["user_sharpness"])
    assert beta.std() > 0.5 and abs(np.log(beta).mean() + 0.5) < 0.3
    same = make_shared_plus_low_rank(SharedPlusLowRankConfig(**{**SMALL, "sharpness_spread": 0.0}))
    np.testing.assert_allclose(same.meta["truth"]["user_sharpness"], 1.0)


def test_deterministic_from_the_seed_and_registered(tmp_path):
    config = SharedPlusLowRankConfig(**SMALL)
    one, two = make_shared_plus_low_rank(config), make_shared_plus_low_rank(config)
    np.testing.assert_array_equal(one.items, two.items)
    for field in ("user", "a", "b", "label"):
        np.testing.assert_array_equal(getattr(one.comparisons, field), getattr(two.comparisons, field))
    other = make_shared_plus_low_rank(SharedPlusLowRankConfig(**{**SMALL, "seed": 1}))
    assert not np.array_equal(one.comparisons.a, other.comparisons.a)
    assert "shared_plus_low_rank" in GENERATORS
    ds = load_dataset(config, cache_dir=tmp_path)                   # written and read back on disk
    assert ds.meta["truth"]["bayes_optimal_accuracy"] == one.meta["truth"]["bayes_optimal_accuracy"]
    np.testing.assert_array_equal(ds.comparisons.label, one.comparisons.label)


def test_bad_options_fail_at_start_up():
    with pytest.raises(ValueError, match="items_per_user"):
        SharedPlusLowRankConfig(n_items=10, items_per_user=20)
    with pytest.raises(ValueError, match="rank"):
        SharedPlusLowRankConfig(dim=4, rank=4)
    with pytest.raises(ValueError, match="deviation_scale"):
        SharedPlusLowRankConfig(deviation_scale=-1.0)


def test_whole_pool_mode():
    ds = make_shared_plus_low_rank(SharedPlusLowRankConfig(**{**SMALL, "items_per_user": 0}))
    assert len(np.union1d(ds.comparisons.a, ds.comparisons.b)) == 120


@pytest.mark.slow
def test_bt_reaches_the_best_non_personalized_accuracy(tmp_path):
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.bt import BTConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    data = SharedPlusLowRankConfig(n_users=300, n_items=150, items_per_user=30, comparisons_per_user=40, dim=12)
    config = RunConfig(model=BTConfig(hidden=[]), data=data,
                       train=TrainConfig(progress=False, checkpoint=False, max_epochs=30, batch_size=256,
                                         learning_rate=0.02, patience=5),
                       eval=EvalConfig(shots=[1], modes=["random"], draws=1, prior_strengths=[1.0],
                                       inference_steps=5),
                       cache_dir=str(tmp_path / "cache"))
    results = run(config, tmp_path / "run")
    ceiling = results["population_optimal_accuracy"]
    assert ceiling > 0.7
    # A population model gets (nearly) the best non-personalized accuracy on held-out pairs of seen
    # users, and no more than sampling noise above it (840 test pairs: one standard error ≈ 0.015).
    assert ceiling - 0.04 < results["seen"]["accuracy"] < ceiling + 0.04
