"""One small text run for the server tests, built once per session: a PAL-A artifact over 64-d
WordLlama embeddings (random θ: the server's job is to serve the library's rewards exactly, not
what they are), users with string ids, some held out."""

from __future__ import annotations

import pathlib

import jax
import pytest

import pluralign
from pluralign.config import model_config
from pluralign.data.splits import split_users
from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
from pluralign.embed.encoders import load_encoder
from pluralign.export import save_model
from pluralign.export.artifact import compute_seen_states
from pluralign.models import REGISTRY, base
from pluralign.train.batches import make_tables


def build_text_run(root: pathlib.Path) -> pathlib.Path:
    encoder = load_encoder("wordllama", trunc_dim=64)
    data = make_ideal_point(IdealPointConfig(n_users=16, n_items=40, comparisons_per_user=8, dim=encoder.dim, n_groups=2, seed=1))
    data.meta.update(encoder=encoder.describe(), user_ids=[f"u{i}" for i in range(data.n_users)])
    split = split_users(data.n_users, seed=0, unseen_val_fraction=0.15, unseen_test_fraction=0.25)
    config, dims = model_config("pal_a"), base.Dims(dim=data.dim, n_users=data.n_users)
    graphdef, one = base.init(REGISTRY["pal_a"][0], config, dims, jax.random.PRNGKey(1))
    params = jax.tree.map(lambda x: x[None], one)  # one seed
    save_model(root / "model", model_config=config, dims=dims, params=params, seeds=[0], dataset_meta=data.meta,
               seen_states=compute_seen_states(graphdef, params, make_tables(data), data.n_users),
               seen_users=split.seen, split=split.to_dict(), prior_strength=3.0, inference_steps=10, inference_learning_rate=0.1)
    return root


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> dict:
    """{run_dir, trained, reward, seen: [ids], held_out: an id the run did not learn}."""
    run_dir = build_text_run(tmp_path_factory.mktemp("serve") / "text_run")
    trained = pluralign.load(run_dir)
    splits = dict(zip(trained.users["user_id"], trained.users["split"]))
    return {"run_dir": run_dir, "trained": trained, "reward": trained.reward(),
            "seen": [u for u, s in splits.items() if s == "seen"], "held_out": next(u for u, s in splits.items() if s == "unseen_test")}
