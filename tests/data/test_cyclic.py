"""Cyclic-preference generators: the cycles are there, the reported ceilings mean what they say,
and the data goes through the registry and the on-disk format like any other dataset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pluralign.data.cyclic import (
    CyclicSkewConfig,
    CyclicTripletsConfig,
    CyclicUsersConfig,
    make_cyclic_skew,
    make_cyclic_triplets,
    make_cyclic_users,
    skew_score,
)
from pluralign.data.sources import GENERATORS, load_dataset

SMALL = {
    "cyclic_triplets": CyclicTripletsConfig(n_users=20, triplets_per_user=5, dim=8),
    "cyclic_skew": CyclicSkewConfig(n_users=20, n_items=100, comparisons_per_user=30, dim=8, n_blocks=2),
    "cyclic_users": CyclicUsersConfig(n_users=30, n_items=100, comparisons_per_user=30, dim=8),
}


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_generated_data_round_trips_through_the_registry_and_disk(kind, tmp_path):
    config = SMALL[kind]
    direct = GENERATORS[kind][1](config)
    ds = load_dataset(config, cache_dir=tmp_path)  # generated, written, read back
    np.testing.assert_array_equal(ds.items, direct.items)
    np.testing.assert_array_equal(ds.comparisons.label, direct.comparisons.label)
    c = ds.comparisons
    assert ds.items.shape[1] == config.dim and ds.n_users == config.n_users
    assert np.all(c.a != c.b) and c.a.max() < len(ds.items)
    assert len(ds.meta["truth"]["user_group"]) == config.n_users
    assert 0.35 < c.label.mean() < 0.65  # pairs come in both orders


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_same_seed_same_data_other_seed_other_data(kind):
    config = SMALL[kind]
    generate = GENERATORS[kind][1]
    again, other = generate(config), generate(dataclasses.replace(config, seed=1))
    np.testing.assert_array_equal(generate(config).items, again.items)
    assert not np.allclose(again.items, other.items)


def test_every_triplet_is_a_three_cycle():
    ds = make_cyclic_triplets(SMALL["cyclic_triplets"])
    c = ds.comparisons
    winner = np.where(c.label > 0.5, c.a, c.b)
    triplet = c.a // 3
    assert np.all(c.b // 3 == triplet)  # comparisons stay within their triplet
    for t in np.unique(triplet):
        # A cycle: each of the three items wins exactly one of the three comparisons.
        assert sorted(winner[triplet == t] % 3) == [0, 1, 2]
    truth = ds.meta["truth"]
    assert truth["bayes_optimal_accuracy"] == 1.0
    assert truth["best_scalar_reward_accuracy"] == pytest.approx(2 / 3)


def test_noisy_triplets_report_a_bayes_accuracy_below_one():
    ds = make_cyclic_triplets(dataclasses.replace(SMALL["cyclic_triplets"], noise_temperature=0.5))
    truth = ds.meta["truth"]
    assert 0.6 < truth["bayes_optimal_accuracy"] < 1.0
    assert truth["best_scalar_reward_accuracy"] < truth["bayes_optimal_accuracy"]


def test_skew_score_is_antisymmetric_and_rotational():
    rng = np.random.default_rng(0)
    z_a, z_b = rng.standard_normal((2, 5, 4))
    gate = np.array([1.0, 0.5])
    np.testing.assert_allclose(skew_score(gate, z_a, z_b), -skew_score(gate, z_b, z_a))
    np.testing.assert_allclose(skew_score(gate, z_a, z_a), 0.0)
    # one block on the unit circle: s = sin(θ_b − θ_a)
    theta = np.array([0.3, 1.5])
    unit = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    assert skew_score(np.ones(1), unit[0], unit[1]) == pytest.approx(np.sin(1.2))


def test_a_pure_skew_matrix_defeats_every_ranking_and_a_transitive_part_restores_it():
    """Borda ranking by the *true* average preference is near chance on a purely cyclic score and
    near the Bayes accuracy once a strong BT part dominates."""
    base = dataclasses.replace(SMALL["cyclic_skew"], n_users=40, n_items=300)
    cyclic = make_cyclic_skew(base).meta["truth"]
    transitive = make_cyclic_skew(dataclasses.replace(base, transitive_scale=20.0)).meta["truth"]
    assert cyclic["borda_ranking_accuracy"] < 0.6 < 0.75 < cyclic["bayes_optimal_accuracy"]
    assert transitive["borda_ranking_accuracy"] > transitive["bayes_optimal_accuracy"] - 0.03
    assert cyclic["skew_rank"] == 4


def test_user_types_disagree_unless_their_gates_agree():
    config = SMALL["cyclic_users"]
    disagree = make_cyclic_users(config).meta["truth"]
    assert disagree["population_optimal_accuracy"] < disagree["bayes_optimal_accuracy"] - 0.05
    agree = make_cyclic_users(dataclasses.replace(config, off_gate=1.0)).meta["truth"]  # every type the same
    assert agree["population_optimal_accuracy"] == pytest.approx(agree["bayes_optimal_accuracy"])
    assert set(disagree["user_group"]) == {0, 1, 2}


def test_mixture_users_have_a_population_ceiling_too():
    truth = make_cyclic_users(dataclasses.replace(SMALL["cyclic_users"], mixture=True)).meta["truth"]
    assert truth["population_optimal_accuracy"] < truth["bayes_optimal_accuracy"]


@pytest.mark.parametrize(
    "make,config,match",
    [
        (make_cyclic_users, CyclicUsersConfig(n_blocks=2, n_types=3), "n_types"),
        (make_cyclic_triplets, CyclicTripletsConfig(angle_jitter=1.0), "angle_jitter"),
        (make_cyclic_skew, CyclicSkewConfig(dim=4, n_blocks=3), "dim"),
        (make_cyclic_users, CyclicUsersConfig(off_gate=-0.1), "off_gate"),
    ],
)
def test_bad_options_fail_clearly(make, config, match):
    with pytest.raises(ValueError, match=match):
        make(config)
