"""Shared test setup: loud broadcasting errors and a tiny planted-structure dataset."""

from __future__ import annotations

import jax
import pytest

# Implicit rank promotion hides broadcasting bugs ([B] against [B, 1] silently gives [B, B]).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def tiny_dataset():
    """60 users in 3 groups, 200 items, D = 16: small enough to train in a second."""
    from pluralign.data.synthetic import IdealPointConfig, make_ideal_point

    return make_ideal_point(
        IdealPointConfig(n_users=60, n_items=200, comparisons_per_user=40, dim=16, latent_dim=4, n_groups=3, seed=0)
    )
