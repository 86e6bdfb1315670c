"""Helpers shared by the model tests: random pairs, numpy references of the building blocks,
a tiny (tables, batch) with a padding row."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pluralign.models import PairBatch, PairEmbeddings, Tables

D = 16  # embedding dim of every helper's pairs


def make_pair(seed: int, n: int = 6, has_prompt=None) -> PairEmbeddings:
    """Random embeddings; e_x is zero where there is no prompt, as `gather` makes it."""
    rng = np.random.default_rng(seed)
    has_prompt = rng.random(n) < 0.5 if has_prompt is None else np.asarray(has_prompt)
    e_x = rng.standard_normal((n, D)).astype(np.float32) * has_prompt[:, None]
    return PairEmbeddings(
        e_x=jnp.asarray(e_x),
        has_prompt=jnp.asarray(has_prompt),
        e_a=jnp.asarray(rng.standard_normal((n, D)), jnp.float32),
        e_b=jnp.asarray(rng.standard_normal((n, D)), jnp.float32),
    )


def swap(pair: PairEmbeddings) -> PairEmbeddings:
    return pair.replace(e_a=pair.e_b, e_b=pair.e_a)


def random_states(model, n: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, model.user_state_dim)), jnp.float32)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_gelu(x):  # jax.nn.gelu's default tanh approximation
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_mlp(mlp, x):
    layers = [(np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])) for layer in mlp.layers]
    for kernel, bias in layers[:-1]:
        x = np_gelu(x @ kernel + bias)
    kernel, bias = layers[-1]
    return x @ kernel + bias


def np_bce(z, y):
    p = 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def tiny_tables_and_batch():
    rng = np.random.default_rng(3)
    tables = Tables(items=jnp.asarray(rng.standard_normal((9, D)), jnp.float32), prompts=jnp.zeros((1, D)))
    batch = PairBatch(
        user=jnp.array([0, 2, 5, 2, 6], jnp.int32),
        prompt=jnp.full((5,), -1, jnp.int32),
        a=jnp.array([0, 3, 8, 1, 4], jnp.int32),
        b=jnp.array([2, 5, 7, 6, 3], jnp.int32),
        label=jnp.array([1.0, 0.0, 0.7, 0.5, 1.0], jnp.float32),
        weight=jnp.array([1.0, 2.0, 1.0, 0.5, 0.0], jnp.float32),  # the last row is padding
    )
    return tables, batch
