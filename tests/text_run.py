"""A PAL-A run directory over 64-d WordLlama text embeddings whose users have string ids
("user-0", ...), with random θ: what the integration, export and GRPO tests check is that texts
reach the library's rewards, not what the rewards are."""

from __future__ import annotations

import pathlib

import jax

from pluralign.config import model_config
from pluralign.data.splits import split_users
from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
from pluralign.embed.encoders import load_encoder
from pluralign.export import save_model
from pluralign.export.artifact import compute_seen_states
from pluralign.models import REGISTRY, base
from pluralign.train.batches import make_tables


def text_run(path: pathlib.Path, *, n_users: int = 12, n_items: int = 40, comparisons_per_user: int = 8,
             inference_steps: int = 10):
    """(run directory, dataset, user split) of an artifact saved under `path`/model."""
    encoder = load_encoder("wordllama", trunc_dim=64)
    data = make_ideal_point(IdealPointConfig(n_users=n_users, n_items=n_items, comparisons_per_user=comparisons_per_user,
                                             dim=encoder.dim, n_groups=2, seed=0))
    data.meta.update(encoder=encoder.describe(), user_ids=[f"user-{i}" for i in range(data.n_users)])
    split = split_users(data.n_users, seed=0, unseen_val_fraction=0.15, unseen_test_fraction=0.25)
    cls, config = REGISTRY["pal_a"][0], model_config("pal_a")
    dims = base.Dims(dim=data.dim, n_users=data.n_users)
    graphdef, one = base.init(cls, config, dims, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x[None], one)  # one seed
    save_model(pathlib.Path(path) / "model", model_config=config, dims=dims, params=params, seeds=[0],
               dataset_meta=data.meta, seen_states=compute_seen_states(graphdef, params, make_tables(data), data.n_users),
               seen_users=split.seen, split=split.to_dict(), prior_strength=3.0, inference_steps=inference_steps,
               inference_learning_rate=0.1)
    return pathlib.Path(path), data, split
