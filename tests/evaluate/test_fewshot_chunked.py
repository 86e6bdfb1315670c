"""Few-shot inference in chunks of users gives what one call over all users gives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pluralign.evaluate import fewshot
from pluralign.evaluate.fewshot_chunked import adapt_and_predict_chunked
from pluralign.models import Dims, PALConfig, model_class
from pluralign.train.batches import make_tables, padded_batch
from pluralign.train.trainer import init_params


def test_chunked_inference_matches_one_call(tiny_dataset):
    ds = tiny_dataset
    config = PALConfig(name="pal_a", n_prototypes=3, latent_dim=4)
    graphdef, params = init_params(model_class(config.name), config, Dims(ds.dim, ds.n_users), jax.random.PRNGKey(0)[None])
    params = jax.tree.map(lambda x: x[0], params)
    users = np.arange(11)  # 11 users in chunks of 4: the last chunk is padded
    episodes = fewshot.make_episodes(ds.comparisons, users, max_shots=5, mode="random", seed=0)
    support, query = padded_batch(ds.comparisons, episodes.pool), padded_batch(ds.comparisons, episodes.query)
    adapt = fewshot.make_adapt_and_predict(graphdef, steps=20, learning_rate=0.1)
    tables, seen = make_tables(ds), jnp.arange(20, ds.n_users)
    states, logits = adapt(params, tables, support, jnp.int32(5), query, jnp.float32(1.0), seen)
    chunked_states, chunked_logits = adapt_and_predict_chunked(
        adapt, params, tables, support, 5, query, 1.0, seen, chunk_users=4
    )
    assert chunked_states.shape == states.shape and chunked_logits.shape == logits.shape
    np.testing.assert_allclose(chunked_states, np.asarray(states), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked_logits, np.asarray(logits), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(states) - np.asarray(states)[:1]).max() > 0  # users got different states
