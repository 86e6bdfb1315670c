"""Active elicitation: the BALD information gain and the active-vs-random evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pluralign.evaluate.active import label_information_gain


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
