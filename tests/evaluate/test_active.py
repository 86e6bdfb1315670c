"""Active elicitation: the BALD information gain and the active-vs-random evaluation."""

from __future__ import annotations

import pytest
import jax
import jax.numpy as jnp
import numpy as np

from pluralign.evaluate.active import label_information_gain, questions_to_reach


def test_information_gain_known_values():
    logits = jnp.array(
        [
            [0.0, 5.0, 20.0, -20.0],
            [0.0, 5.0, -20.0, 20.0],
        ]
    )  # pairs: both unsure, both agree, confident disagreement (twice)
    gain = np.asarray(label_information_gain(logits))
    assert gain.shape == (4,)
    np.testing.assert_allclose(gain[:2], 0.0, atol=1e-6)  # no disagreement -> nothing to learn
    np.testing.assert_allclose(gain[2:], np.log(2.0), atol=1e-5)  # one answer settles the sample


def test_information_gain_matches_a_monte_carlo_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(64, 10))
    p = 1 / (1 + np.exp(-logits))
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))
    expected = h(p.mean(0)) - h(p).mean(0)
    got = jax.jit(label_information_gain)(jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-6)
    assert (np.asarray(got) >= 0).all() and (np.asarray(got) <= np.log(2) + 1e-6).all()


def test_questions_to_reach():
    assert questions_to_reach([0.5, 0.7, 0.8, 0.8], 0.75) == 2
    assert questions_to_reach([0.5, 0.7], 0.5) == 0
    assert questions_to_reach([0.5, 0.7], 0.9) is None


@pytest.mark.slow
def test_active_elicitation_beats_random_on_hidden_types(vpl_two_types, tmp_path):
    """A VPL trained on 2 hidden types (tests/conftest.py); for unseen users, asking the most
    informative pairs identifies the type sooner than asking random ones."""
    import json

    from pluralign.data import split_users
    from pluralign.data.sources import load_dataset
    from pluralign.evaluate.active import evaluate_active, save_active_report
    import pluralign
    from pluralign.train.batches import make_tables

    config = vpl_two_types["config"]
    dataset = load_dataset(config.data, config.cache_dir)
    trained = pluralign.load(vpl_two_types["run_dir"])  # the run's model, as it was saved
    ev = config.eval
    split = split_users(dataset.n_users, seed=ev.split_seed, unseen_val_fraction=ev.unseen_val_fraction,
                        unseen_test_fraction=ev.unseen_test_fraction)

    curve = evaluate_active(trained.graphdef, trained.params, make_tables(dataset),
                            dataset.comparisons, split.unseen_test, n_questions=8, pool_size=20, n_samples=16)
    active, random = np.asarray(curve["active"]), np.asarray(curve["random"])
    assert active.shape == random.shape == (9,) and curve["n_users"] == len(split.unseen_test)
    assert active[0] == random[0]  # no answers yet: both score with the prior
    assert active[1:5].mean() > random[1:5].mean() + 0.02  # informative questions pay off early
    summary = save_active_report(curve, tmp_path / "report", reference_questions=4)
    assert summary["active_questions_to_reach_it"] is not None and summary["active_questions_to_reach_it"] < 4
    assert (tmp_path / "report" / "active.png").stat().st_size > 0
    assert json.loads((tmp_path / "report" / "active.json").read_text())["random"] == curve["random"]
