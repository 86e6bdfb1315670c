"""The built-in multi-attribute generator: attributes visible through the embedding, noisy and
partly missing ratings, users as unit directions, labels following the true model, the ceilings it
reports, and a round trip through the on-disk format."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pluralign.data.multi_attribute import MultiAttributeConfig, make_multi_attribute
from pluralign.data.sources import load_dataset

CONFIG = MultiAttributeConfig(n_users=60, n_items=800, comparisons_per_user=50, dim=12, seed=3)


@pytest.fixture(scope="module")
def dataset():
    return make_multi_attribute(CONFIG)


def test_shapes_names_and_missing_ratings(dataset):
    m = len(CONFIG.attribute_names)
    assert dataset.items.shape == (800, 12) and dataset.attributes.shape == (800, m)
    assert dataset.attributes.dtype == np.float32 and dataset.meta["attribute_names"] == CONFIG.attribute_names
    missing = np.isnan(dataset.attributes).mean()
    assert abs(missing - CONFIG.missing_fraction) < 0.03
    assert len(dataset.comparisons) == 60 * 50 and dataset.prompts is None
    directions = np.asarray(dataset.meta["truth"]["user_directions"])
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-12)


def test_attributes_are_linear_in_the_embedding_and_ratings_are_noisy(dataset):
    z = np.asarray(dataset.meta["truth"]["item_attributes"])
    x = np.concatenate([dataset.items, np.ones((800, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(x, z, rcond=None)
    np.testing.assert_allclose(x @ coef, z, atol=1e-4)  # z is a linear function of e (float32 rounding)
    observed = ~np.isnan(dataset.attributes)
    residual = (dataset.attributes - z)[observed]
    assert abs(residual.std() - CONFIG.rating_noise) < 0.02
    # The reported ceiling is the R² of the true attributes on the noisy ratings.
    for j, ceiling in enumerate(dataset.meta["truth"]["r2_ceiling"]):
        y = dataset.attributes[observed[:, j], j]
        r2 = 1 - np.sum((y - z[observed[:, j], j]) ** 2) / np.sum((y - y.mean()) ** 2)
        assert abs(r2 - ceiling) < 0.03


def test_verbosity_leaks_into_the_other_attributes(dataset):
    z = np.asarray(dataset.meta["truth"]["item_attributes"])
    corr = np.corrcoef(z.T)
    assert np.all(np.abs(corr[:-1, -1] - CONFIG.verbosity_leak) < 0.08)


def test_labels_follow_the_true_directions_and_ceilings(dataset):
    truth, c = dataset.meta["truth"], dataset.comparisons
    z, v = np.asarray(truth["item_attributes"]), np.asarray(truth["user_directions"])
    p = 1 / (1 + np.exp(-CONFIG.sharpness * np.sum((z[c.a] - z[c.b]) * v[c.user], axis=1)))
    assert abs(np.mean((p > 0.5) == (c.label > 0.5)) - truth["bayes_optimal_accuracy"]) < 0.02
    assert truth["bayes_optimal_accuracy"] > truth["population_optimal_accuracy"] + 0.05
    # A wrong direction (the opposite one) does much worse than the truth.
    assert np.mean((p < 0.5) == (c.label > 0.5)) < 0.3


def test_prompts_are_optional_and_round_trip_through_disk(tmp_path):
    config = dataclasses.replace(CONFIG, n_items=50, n_users=8, comparisons_per_user=5, n_prompts=4)
    loaded = load_dataset(config, tmp_path)
    assert loaded.prompts.shape == (4, 12) and set(np.unique(loaded.comparisons.prompt)) <= set(range(4))
    fresh = make_multi_attribute(config)
    np.testing.assert_array_equal(np.asarray(loaded.attributes), fresh.attributes)  # NaNs kept in place
    assert loaded.meta["attribute_names"] == CONFIG.attribute_names


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attribute_names": ["helpfulness"]}, "attribute_names"),
        ({"population_direction": [1.0, 0.0]}, "population_direction"),
        ({"missing_fraction": 1.0}, "missing_fraction"),
        ({"dim": 2}, "do not fit"),
    ],
)
def test_bad_config_fails_clearly(change, message):
    with pytest.raises(ValueError, match=message):
        make_multi_attribute(dataclasses.replace(CONFIG, **change))
