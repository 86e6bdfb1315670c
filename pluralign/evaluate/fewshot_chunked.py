"""Few-shot inference for very many unseen users in one call, in bounded memory.

`fewshot.make_adapt_and_predict` adapts every user of its batch at once; for 100,000 users
its intermediate arrays ([U, k, ...] features, optimiser state per user) would not fit a
device. `adapt_and_predict_chunked` runs it on fixed-size chunks of users (one compiled
shape: the last chunk is padded with weight-0 users) and collects the states and query
logits on the host, so memory is set by `chunk_users`, not by the number of users.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pluralign.models import base


def adapt_and_predict_chunked(
    adapt_and_predict, params, tables: base.Tables, pool: base.PairBatch, n_shots: int,
    query: base.PairBatch, prior_strength: float, seen_users, *, chunk_users: int = 8192, residual_ratio: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`adapt_and_predict` (from `fewshot.make_adapt_and_predict`) over [U, ...] support pools (the
    first n_shots pairs of each are the support) and query batches, `chunk_users` users per call:
    (states [U, S], query logits [U, Q]) as numpy arrays. `residual_ratio`: the prior's residual-block
    ratio (`base.empirical_prior`; a run's results.json `unseen.residual_ratio_by_mode`)."""
    n_users = pool.label.shape[0]
    chunk = max(1, min(chunk_users, n_users))
    n_chunks = -(-n_users // chunk)

    def rows(batch, start):
        part = jax.tree.map(lambda x: np.asarray(x[start:start + chunk]), batch)  # host copy of one chunk
        pad = chunk - part.label.shape[0]
        if pad:  # weight-0 users: their states are the prior, their logits are dropped
            part = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], pad, axis=0)]), part)
            part = part.replace(weight=part.weight * (np.arange(chunk) < chunk - pad)[:, None])
        return jax.tree.map(jnp.asarray, part)

    states, logits = [], []
    for c in range(n_chunks):
        start = c * chunk
        s, q = adapt_and_predict(params, tables, rows(pool, start), jnp.int32(n_shots), rows(query, start),
                                 jnp.float32(prior_strength), seen_users, jnp.float32(residual_ratio))
        keep = min(chunk, n_users - start)
        states.append(s[:keep])  # fetched at the end: the next chunk is dispatched without waiting
        logits.append(q[:keep])
    return np.concatenate([np.asarray(s) for s in states]), np.concatenate([np.asarray(q) for q in logits])
