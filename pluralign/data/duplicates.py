"""Repeated comparisons: the same user comparing the same two items under the same prompt
more than once (in either order). A copy of a held-out comparison inside the training set
would let a model score it by memory, so `pluralign.run` drops such training copies, and the
few-shot protocol keeps copies of a query comparison out of the support pool."""

from __future__ import annotations

import numpy as np

from pluralign.data.format import Comparisons


def comparison_keys(comparisons: Comparisons, rows: np.ndarray | None = None) -> np.ndarray:
    """[n] int64 key per row (all rows when `rows` is None): equal keys are the same (user,
    prompt, unordered item pair), whichever item was shown first. Keys are comparable only
    within one call."""
    rows = np.arange(len(comparisons)) if rows is None else np.asarray(rows)
    lo = np.minimum(comparisons.a[rows], comparisons.b[rows]).astype(np.int64)
    hi = np.maximum(comparisons.a[rows], comparisons.b[rows]).astype(np.int64)
    columns = np.stack([comparisons.user[rows].astype(np.int64), comparisons.prompt[rows].astype(np.int64), lo, hi])
    _, inverse = np.unique(columns, axis=1, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def count_repeats(comparisons: Comparisons) -> int:
    """Rows that repeat an earlier row's comparison (0 when every comparison is unique)."""
    keys = comparison_keys(comparisons)
    return int(len(keys) - len(np.unique(keys)))


def drop_copies(comparisons: Comparisons, train: np.ndarray, held_out: np.ndarray) -> tuple[np.ndarray, int]:
    """The training rows without any copy of a held-out comparison, and how many were dropped."""
    keys = comparison_keys(comparisons, np.concatenate([train, held_out]))
    copy = np.isin(keys[: len(train)], keys[len(train):])
    return train[~copy], int(copy.sum())
