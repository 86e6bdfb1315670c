"""Per-step randomness reaches a model's loss (fresh per step, epoch and seed; reproducible), and bad train configs fail early."""

from __future__ import annotations

import pytest
import jax
import numpy as np

from pluralign.data import split_seen_pairs, split_users
from pluralign.models import BT, BTConfig, Dims
from pluralign.models.base import mean_preference_loss
from pluralign.train.batches import make_tables, to_batch
from pluralign.train.trainer import Trainer, TrainConfig, init_params


class NoisyBT(BT):
    """BT whose loss reports the uniform draw it gets from the step key."""

    def loss(self, tables, batch, rng):
        value, metrics = mean_preference_loss(self, tables, batch)
        draw = jax.random.uniform(rng)
        return value, {**metrics, "draw": draw, "draw_squared": draw**2}


def _draws(dataset, seeds):
    split = split_users(dataset.n_users, seed=0)
    pairs = split_seen_pairs(dataset.comparisons, split.seen, seed=0)
    tables = make_tables(dataset)
    train = to_batch(dataset.comparisons.take(pairs.train))
    keys = jax.vmap(jax.random.PRNGKey)(np.asarray(seeds))
    graphdef, params = init_params(NoisyBT, BTConfig(hidden=[4]), Dims(dataset.dim, dataset.n_users), keys)
    trainer = Trainer(graphdef, TrainConfig(batch_size=32, progress=False), len(pairs.train))
    state = trainer.init_state(params, keys)
    means, variances = [], []
    for epoch in range(2):
        state, metrics = trainer.train_epoch(state, tables, train, np.int32(epoch), None)
        mean = np.asarray(metrics["draw"], np.float64)  # [n_seeds]: the epoch means of the draws
        means.append(mean)
        variances.append(np.asarray(metrics["draw_squared"], np.float64) - mean**2)
    return np.stack(means), np.stack(variances), trainer.steps_per_epoch


@pytest.mark.slow
def test_each_step_epoch_and_seed_gets_its_own_key(tiny_dataset):
    draws, variances, steps = _draws(tiny_dataset, [0, 1])
    assert steps > 5
    # Within an epoch the steps' draws spread like U(0, 1) (variance 1/12); one key reused
    # for every step would give variance 0.
    assert np.all(variances > 0.03)
    assert draws[0, 0] != draws[1, 0]  # epochs differ
    assert draws[0, 0] != draws[0, 1]  # seeds differ
    again, _, _ = _draws(tiny_dataset, [0, 1])
    np.testing.assert_array_equal(draws, again)  # and it is all reproducible


def test_bad_train_configs_fail_at_construction():
    import pytest

    for bad in (dict(optimizer="adan"), dict(schedule="cosin"), dict(batch_size=0), dict(data_parallel="yes")):
        with pytest.raises(ValueError, match="train\\."):
            TrainConfig(**bad)
