"""The idiosyncratic generator: a shared reward, a small transferable personal part and per-(user, item)
random effects that embeddings cannot predict; its three ceilings and the effects' consistency."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.data.format import validate_dataset
from pluralign.data.idiosyncratic import IdiosyncraticConfig, make_idiosyncratic
from pluralign.data.sources import GENERATORS, load_dataset

SMALL = dict(n_users=120, n_items=100, items_per_user=30, comparisons_per_user=60, dim=12)


def effect_table(truth: dict, n_items: int) -> np.ndarray:
    """[U, n_items] ε_{u,i} from the truth, NaN for items the user does not see."""
    seen, effects = np.asarray(truth["user_items"]), np.asarray(truth["user_item_effects"])
    table = np.full((len(seen), n_items), np.nan)
    np.put_along_axis(table, seen, effects, axis=1)
    return table


def test_shapes_and_items_reused_from_a_common_pool():
    ds = make_idiosyncratic(IdiosyncraticConfig(**SMALL))
    validate_dataset(ds)
    c, truth = ds.comparisons, ds.meta["truth"]
    assert ds.items.shape == (100, 12) and ds.prompts is None and len(c) == 120 * 60
    np.testing.assert_array_equal(np.bincount(c.user), np.full(120, 60))
    assert np.all(c.a != c.b) and set(np.unique(c.label)) <= {0.0, 1.0}
    assert np.shape(truth["user_weights"]) == (120, 2) and len(truth["user_sharpness"]) == 120
    assert np.shape(truth["user_items"]) == np.shape(truth["user_item_effects"]) == (120, 30)
    table = effect_table(truth, 100)
    assert not np.isnan(table[c.user, c.a]).any() and not np.isnan(table[c.user, c.b]).any()  # pairs among seen items
    users_per_item = np.bincount(np.ravel(truth["user_items"]), minlength=100)
    assert users_per_item.min() >= 10                              # every pool item is shared across users
    assert 0.4 < c.label.mean() < 0.6                              # a/b order carries no information


def test_default_ceilings_population_below_transferable_below_bayes():
    default = make_idiosyncratic(IdiosyncraticConfig()).meta["truth"]  # nothing transfers by default
    assert default["transferable_optimal_accuracy"] == pytest.approx(default["population_optimal_accuracy"])
    assert default["transferable_optimal_accuracy"] < default["bayes_optimal_accuracy"] - 0.06
    truth = make_idiosyncratic(IdiosyncraticConfig(deviation_scale=0.6)).meta["truth"]
    population, bayes = truth["population_optimal_accuracy"], truth["bayes_optimal_accuracy"]
    transferable = truth["transferable_optimal_accuracy"]
    assert 0.7 < population < transferable - 0.015                 # v_u is worth a little, on new items too
    assert transferable < bayes - 0.06                              # ε is worth much, on remembered items only


def test_ceilings_collapse_when_a_part_is_switched_off():
    no_effects = make_idiosyncratic(IdiosyncraticConfig(**SMALL, item_effect_scale=0.0)).meta["truth"]
    assert no_effects["transferable_optimal_accuracy"] == pytest.approx(no_effects["bayes_optimal_accuracy"])
    no_deviation = make_idiosyncratic(IdiosyncraticConfig(**SMALL, deviation_scale=0.0)).meta["truth"]
    assert no_deviation["transferable_optimal_accuracy"] == pytest.approx(no_deviation["population_optimal_accuracy"])
    # Only ε: nothing the embeddings carry predicts a label, both partial predictors are coin flips.
    only_effects = make_idiosyncratic(IdiosyncraticConfig(**SMALL, shared_scale=0.0, deviation_scale=0.0)).meta["truth"]
    assert only_effects["population_optimal_accuracy"] == only_effects["transferable_optimal_accuracy"] == 0.5
    assert only_effects["bayes_optimal_accuracy"] > 0.75


def test_an_item_has_one_effect_across_a_users_comparisons():
    # Only ε, nearly noiseless: every label must follow the user's ε table, whichever pair the item is in.
    ds = make_idiosyncratic(IdiosyncraticConfig(**SMALL, shared_scale=0.0, deviation_scale=0.0,
                                                item_effect_scale=100.0))
    c = ds.comparisons
    table = effect_table(ds.meta["truth"], 100)
    follows = (table[c.user, c.a] > table[c.user, c.b]) == (c.label == 1.0)
    assert follows.mean() > 0.98
    # Every item appears in several of a user's comparisons, so the effect was reused, not redrawn.
    per_user_item = np.bincount(np.concatenate([c.user, c.user]) * 100 + np.concatenate([c.a, c.b]), minlength=120 * 100)
    assert per_user_item[per_user_item > 0].mean() > 3


def test_effects_are_unpredictable_from_embeddings_and_from_other_users():
    ds = make_idiosyncratic(IdiosyncraticConfig(**SMALL))
    truth = ds.meta["truth"]
    seen, effects = np.asarray(truth["user_items"]).ravel(), np.asarray(truth["user_item_effects"]).ravel()
    assert effects.std() == pytest.approx(1.5, rel=0.05)
    # Least squares of ε_{u,i} on item i's embedding: R² at the chance level D / N (≈ 0.003), not above.
    x = np.concatenate([ds.items[seen], np.ones((len(seen), 1))], axis=1)
    residual = effects - x @ np.linalg.lstsq(x, effects, rcond=None)[0]
    assert 1 - residual.var() / effects.var() < 0.01
    # Two users' effects on the same items are uncorrelated: ε is the user's, not the item's.
    table = effect_table(truth, 100)
    both = ~np.isnan(table[0]) & ~np.isnan(table[1:])               # [U - 1, n_items]
    first, other = np.broadcast_to(table[0], both.shape)[both], table[1:][both]
    assert abs(np.corrcoef(first, other)[0, 1]) < 0.1


def test_deterministic_from_the_seed_and_registered(tmp_path):
    config = IdiosyncraticConfig(**SMALL)
    one, two = make_idiosyncratic(config), make_idiosyncratic(config)
    np.testing.assert_array_equal(one.items, two.items)
    for field in ("user", "a", "b", "label"):
        np.testing.assert_array_equal(getattr(one.comparisons, field), getattr(two.comparisons, field))
    assert one.meta["truth"] == two.meta["truth"]
    other = make_idiosyncratic(IdiosyncraticConfig(**{**SMALL, "seed": 1}))
    assert not np.array_equal(one.comparisons.a, other.comparisons.a)
    assert "idiosyncratic" in GENERATORS
    ds = load_dataset(config, cache_dir=tmp_path)                   # written, read back and validated on disk
    assert ds.meta["truth"]["transferable_optimal_accuracy"] == one.meta["truth"]["transferable_optimal_accuracy"]
    np.testing.assert_array_equal(ds.comparisons.label, one.comparisons.label)


def test_defaults_reach_twenty_shots_in_both_modes():
    from pluralign.evaluate.fewshot import make_episodes

    ds = make_idiosyncratic(IdiosyncraticConfig())
    users = np.arange(60)
    for mode in ("random", "item_disjoint"):
        episodes = make_episodes(ds.comparisons, users, max_shots=20, mode=mode, seed=0)
        assert np.mean(episodes.pool_size >= 20) > 0.9, mode


def test_whole_pool_mode_and_bad_options():
    ds = make_idiosyncratic(IdiosyncraticConfig(**{**SMALL, "items_per_user": 0}))
    assert len(np.union1d(ds.comparisons.a, ds.comparisons.b)) == 100
    assert np.shape(ds.meta["truth"]["user_item_effects"]) == (120, 100)
    with pytest.raises(ValueError, match="items_per_user"):
        IdiosyncraticConfig(n_items=10, items_per_user=20)
    with pytest.raises(ValueError, match="rank"):
        IdiosyncraticConfig(dim=4, rank=4)
    with pytest.raises(ValueError, match="item_effect_scale"):
        IdiosyncraticConfig(item_effect_scale=-1.0)
