"""The data path from a loaded dataset to what a jitted step reads (docs/design/architecture.md, Training).

A dataset's comparisons become `PairBatch`es of index and label columns, and its item and
prompt embeddings become `Tables` (on the device, or `HostTables` gathered per step when they
exceed the device budget); the step gathers the rows a batch references (`base.gather`).
Training and seen-user evaluation use flat [N] batches (`to_batch`), few-shot evaluation
[users, rows] batches padded with weight 0 (`padded_batch`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pluralign.data import Comparisons
from pluralign.models import base
from pluralign.train import host_tables


def to_batch(comparisons: Comparisons) -> base.PairBatch:
    """[N] comparisons -> a PairBatch of [N] device arrays."""
    return base.PairBatch(
        user=jnp.asarray(comparisons.user), prompt=jnp.asarray(comparisons.prompt),
        a=jnp.asarray(comparisons.a), b=jnp.asarray(comparisons.b),
        label=jnp.asarray(comparisons.label), weight=jnp.asarray(comparisons.weight),
    )


def padded_batch(comparisons: Comparisons, rows: np.ndarray) -> base.PairBatch:
    """[U, n] rows (−1 = padding) -> a PairBatch of [U, n] arrays with weight 0 on padding."""
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    return base.PairBatch(
        user=jnp.asarray(comparisons.user[safe]),
        prompt=jnp.asarray(comparisons.prompt[safe]),
        a=jnp.asarray(comparisons.a[safe]),
        b=jnp.asarray(comparisons.b[safe]),
        label=jnp.asarray(comparisons.label[safe]),
        weight=jnp.asarray(np.where(valid, comparisons.weight[safe], 0.0).astype(np.float32)),
    )


def make_tables(dataset, device_budget_mb: float | None = None) -> base.Tables | host_tables.HostTables:
    """The embedding tables on the device, or left on the host (`HostTables`, gathered per step)
    when they exceed `device_budget_mb`."""
    if device_budget_mb is not None and host_tables.table_bytes(dataset) > device_budget_mb * 2**20:
        return host_tables.host_tables(dataset)
    items = jnp.asarray(dataset.items)
    prompts = jnp.asarray(dataset.prompts) if dataset.prompts is not None else jnp.zeros((1, dataset.dim), items.dtype)
    return base.Tables(items=items, prompts=prompts)
