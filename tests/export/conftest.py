"""A small PAL-A artifact (random θ, D = 8) whose users have ids that are not row numbers, shared by
the reward input tests (with `helpers.HashEncoder` as its text encoder)."""

from __future__ import annotations

import jax
import pytest

from tests.export.helpers import HashEncoder


@pytest.fixture(scope="session")
def pal_a_artifact(tmp_path_factory):
    """(path of the artifact, the dataset): 12 users with ids 100..111, 30 items of D = 8."""
    from pluralign.config import model_config
    from pluralign.data.splits import split_users
    from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
    from pluralign.export import save_model
    from pluralign.export.artifact import compute_seen_states
    from pluralign.models import REGISTRY, base
    from pluralign.train.batches import make_tables

    cls, _ = REGISTRY["pal_a"]
    config = model_config("pal_a")
    data = make_ideal_point(IdealPointConfig(n_users=12, n_items=30, comparisons_per_user=8, dim=8, n_groups=2, seed=0))
    split = split_users(data.n_users, seed=0, unseen_val_fraction=0.2, unseen_test_fraction=0.2)
    dims = base.Dims(dim=data.dim, n_users=data.n_users)
    graphdef, one = base.init(cls, config, dims, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x[None], one)  # one seed
    meta = dict(data.meta, user_ids=[100 + u for u in range(data.n_users)])
    path = tmp_path_factory.mktemp("pal_a_inputs") / "model"
    save_model(path, model_config=config, dims=dims, params=params,
               seen_states=compute_seen_states(graphdef, params, make_tables(data), data.n_users), seeds=[0],
               dataset_meta=meta, seen_users=split.seen, split=split.to_dict(), inference_steps=5)
    return path, data


@pytest.fixture(scope="session")
def pal_a_reward(pal_a_artifact):
    """The artifact's `PersonalizedReward` (capacity 8) with the stand-in encoder."""
    import pluralign

    return pluralign.load(pal_a_artifact[0]).reward(capacity=8, encoder=HashEncoder())
