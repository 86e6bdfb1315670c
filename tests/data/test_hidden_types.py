"""The hidden-type generator: annotator types that agree on consensus pairs and disagree
on controversial ones, with the ceilings run.py reports."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.data.hidden_types import HiddenTypesConfig, make_hidden_types
from pluralign.data.sources import load_dataset
from pluralign.data.synthetic import optimal_accuracies

SMALL = dict(n_users=120, n_items=200, comparisons_per_user=30, dim=12)


def test_ceilings_score_a_population_tie_one_half():
    """Every generator's ceilings (persona's included) come from one function with one tie rule:
    p̄ = 1/2, exactly or up to float rounding, scores 1/2 whatever the user's p."""
    p = np.array([1.0, 0.0, 0.9, 0.8])
    p_bar = np.array([0.5, 0.5 - 1e-15, 0.7, 0.5 + 1e-6])  # an exact tie, one float rounding moved, two non-ties
    out = optimal_accuracies(p, p_bar)
    assert out["population_optimal_accuracy"] == pytest.approx((0.5 + 0.5 + 0.9 + 0.8) / 4, abs=1e-12)
    assert out["bayes_optimal_accuracy"] == pytest.approx((1.0 + 1.0 + 0.9 + 0.8) / 4, abs=1e-12)


@pytest.mark.parametrize("n_types", [2, 4])
def test_types_disagree_and_the_ceilings_say_so(n_types):
    ds = make_hidden_types(HiddenTypesConfig(n_types=n_types, **SMALL))
    truth = ds.meta["truth"]
    assert len(truth["user_group"]) == ds.n_users == 120
    assert set(truth["user_group"]) == set(range(n_types))
    assert abs(truth["controversial_fraction"] - 0.5) < 0.05
    # Personalization can win: the true per-type model beats the best single reward clearly.
    assert truth["bayes_optimal_accuracy"] > truth["population_optimal_accuracy"] + 0.1
    assert 0.5 <= truth["population_optimal_accuracy"] <= truth["bayes_optimal_accuracy"] <= 1.0
    group = np.asarray(truth["user_group"])[ds.comparisons.user]
    by_type = [ds.comparisons.label[group == k].mean() for k in range(n_types)]
    assert all(0.3 < m < 0.7 for m in by_type)  # labels carry no position bias (a vs b drawn symmetrically)


def test_one_type_has_nothing_to_personalize():
    truth = make_hidden_types(HiddenTypesConfig(n_types=1, **SMALL)).meta["truth"]
    assert truth["bayes_optimal_accuracy"] == truth["population_optimal_accuracy"]
    assert truth["controversial_fraction"] == 0.0


def test_controversial_pairs_split_the_types():
    # Nearly noiseless labels on pairs that are all controversial: two types answer every pair
    # oppositely, so one reward for everybody is right only for the larger type.
    ds = make_hidden_types(HiddenTypesConfig(n_types=2, controversial_fraction=1.0, reward_scale=50.0, **SMALL))
    truth = ds.meta["truth"]
    share = max(np.mean(np.asarray(truth["user_group"]) == k) for k in (0, 1))
    assert abs(truth["population_optimal_accuracy"] - share) < 0.06
    assert truth["bayes_optimal_accuracy"] > 0.95


def test_it_is_a_registered_generator_and_bad_options_fail(tmp_path):
    config = HiddenTypesConfig(n_types=2, **SMALL)
    ds = load_dataset(config, cache_dir=tmp_path)  # written and read back in the on-disk format
    assert ds.meta["truth"]["bayes_optimal_accuracy"] == make_hidden_types(config).meta["truth"]["bayes_optimal_accuracy"]
    with pytest.raises(ValueError, match="controversial_fraction"):
        HiddenTypesConfig(controversial_fraction=1.5)
    with pytest.raises(ValueError, match="latent_dim"):
        HiddenTypesConfig(dim=4, latent_dim=8)


def test_the_k_shot_ceiling_rises_to_the_known_type_accuracy():
    from pluralign.data.hidden_types import type_posterior_accuracy
    from pluralign.evaluate.fewshot import make_episodes

    ds = make_hidden_types(HiddenTypesConfig(n_types=4, **SMALL))
    episodes = make_episodes(ds.comparisons, np.arange(ds.n_users), max_shots=15, mode="random", seed=0)
    ceiling = {k: type_posterior_accuracy(ds.meta["truth"], ds.comparisons, episodes.pool[:, :k], episodes.query)
               for k in (0, 2, 15)}
    truth = ds.meta["truth"]
    assert abs(ceiling[0] - truth["population_optimal_accuracy"]) < 0.05  # no answers: the best single reward
    assert ceiling[0] < ceiling[2] < ceiling[15]
    assert ceiling[15] > truth["bayes_optimal_accuracy"] - 0.03  # 15 answers all but reveal the type
