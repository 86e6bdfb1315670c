"""Data parallelism (Mesh + NamedSharding): same result as one device, and really sharded.

Runs in a subprocess with two forced host devices, since the device count is fixed when
JAX starts.
"""

from __future__ import annotations

import pytest
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
    from pluralign.data import split_seen_pairs, split_users
    from pluralign.models import PALA, PALConfig
    from pluralign.models.base import Dims
    from pluralign.train.batches import make_tables, to_batch
    from pluralign.train.trainer import Trainer, TrainConfig, init_params

    assert jax.device_count() == 2
    ds = make_ideal_point(IdealPointConfig(n_users=60, n_items=100, comparisons_per_user=30, dim=8))
    split = split_users(ds.n_users, seed=0)
    pairs = split_seen_pairs(ds.comparisons, split.seen, seed=0)
    tables = make_tables(ds)
    train, val = to_batch(ds.comparisons.take(pairs.train)), to_batch(ds.comparisons.take(pairs.val))
    out = {}
    for mode in ("off", "on"):
        graphdef, params = init_params(PALA, PALConfig(), Dims(ds.dim, ds.n_users), jax.random.split(jax.random.PRNGKey(0), 2))
        trainer = Trainer(graphdef, TrainConfig(max_epochs=3, batch_size=64, progress=False, data_parallel=mode), len(pairs.train))
        state = trainer.init_state(params, jax.random.split(jax.random.PRNGKey(1), 2))
        if mode == "on":
            hlo = trainer.train_epoch.lower(state, tables, train, jnp.int32(0), None).compile().as_text()
            assert "all-reduce" in hlo, "no cross-device reduction: the batch was not sharded"
        state, _ = trainer.fit(state, tables, train, val)
        out[mode] = jax.tree.leaves(state.best_params)
    for a, b in zip(out["off"], out["on"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    print("OK")
    """
)


@pytest.mark.slow
def test_two_device_data_parallel_training_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "JAX_NUMPY_RANK_PROMOTION": "raise", "JAX_NUMPY_DTYPE_PROMOTION": "strict"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
