"""Shared test setup: loud broadcasting errors and a tiny planted-structure dataset."""

from __future__ import annotations

import jax
import pytest

# Implicit rank promotion hides broadcasting bugs ([B] against [B, 1] silently gives [B, B]);
# implicit dtype promotion hides precision bugs (a float16 table times a float32 weight, an
# int index mixed into float math): both raise in tests (equinox's and levanter's conftest).
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def tiny_dataset():
    """60 users in 3 groups, 200 items, D = 16: small enough to train in a second."""
    from pluralign.data.synthetic import IdealPointConfig, make_ideal_point

    return make_ideal_point(
        IdealPointConfig(n_users=60, n_items=200, comparisons_per_user=40, dim=16, latent_dim=4, n_groups=3, seed=0)
    )


@pytest.fixture(scope="session")
def vpl_two_types(tmp_path_factory):
    """A VPL trained by `run.run` on 2 hidden annotator types (200 users, checkpointed), shared by
    the VPL and active-elicitation tests: {config, results, run_dir}."""
    from pluralign.data.hidden_types import HiddenTypesConfig
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.vpl import VPLConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    root = tmp_path_factory.mktemp("vpl_two_types")
    config = RunConfig(
        model=VPLConfig(beta_warmup_steps=100),
        data=HiddenTypesConfig(n_types=2, n_users=200, n_items=300, comparisons_per_user=40, dim=16, seed=1),
        train=TrainConfig(progress=False, max_epochs=12, batch_size=128, learning_rate=0.01, patience=12),
        eval=EvalConfig(shots=[1, 8], modes=["random"], draws=1, prior_strengths=[1.0], pair_test_fraction=0.2,
                        unseen_test_fraction=0.3),
        cache_dir=str(root / "cache"),
    )
    return {"config": config, "results": run(config, root / "run"), "run_dir": root / "run"}
