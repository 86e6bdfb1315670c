"""User-level and pair-level splits (docs/design/data-format.md, docs/design/evaluation-protocol.md).

Users are split into seen / unseen-val / unseen-test; only seen users'
comparisons train the shared parameters θ, and each seen user's comparisons are
further split into train / val / test pairs to measure fit. Model selection may
use seen-user val pairs and unseen-val users, never unseen-test users.
Everything is deterministic from a seed and vectorised (no Python loop over
users), so 1M users and 10M comparisons split in seconds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pluralign.data.format import Comparisons


def _check_fractions(**fractions: float) -> None:
    for name, f in fractions.items():
        if not (math.isfinite(f) and f >= 0):
            raise ValueError(f"{name} must be a finite fraction >= 0, got {f}")
    if sum(fractions.values()) >= 1:
        raise ValueError(f"{' + '.join(fractions)} must be < 1 so that some users/pairs "
                         f"remain for training, got {fractions}")


def _round_half_up(x):
    # Python's round() rounds half to even, which makes counts hard to predict.
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class UserSplit:
    """Disjoint sorted int32 user ids; together they cover all users."""

    seen: np.ndarray
    unseen_val: np.ndarray
    unseen_test: np.ndarray
    seed: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserSplit):
            return NotImplemented
        return self.seed == other.seed and all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("seen", "unseen_val", "unseen_test"))

    __hash__ = None  # arrays are mutable

    @property
    def n_users(self) -> int:
        return len(self.seen) + len(self.unseen_val) + len(self.unseen_test)

    def to_dict(self) -> dict:
        """JSON-able; stored with each run so that the split survives numpy upgrades."""
        return {"seed": int(self.seed), "seen": self.seen.tolist(),
                "unseen_val": self.unseen_val.tolist(), "unseen_test": self.unseen_test.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> UserSplit:
        ids = {k: np.sort(np.asarray(d[k], dtype=np.int32)) for k in ("seen", "unseen_val",
                                                                      "unseen_test")}
        joined = np.sort(np.concatenate(list(ids.values())))
        if np.any(joined[1:] == joined[:-1]):
            raise ValueError("user split is not disjoint")
        return cls(seed=int(d["seed"]), **ids)


def split_users(n_users: int, *, seed: int, unseen_val_fraction: float = 0.1,
                unseen_test_fraction: float = 0.2) -> UserSplit:
    """Randomly splits users ``0 .. n_users-1`` into seen / unseen-val / unseen-test.

    Each nonzero fraction gets at least one user when ``n_users >= 3``; at least one
    user always stays seen.
    """
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    _check_fractions(unseen_val_fraction=unseen_val_fraction,
                     unseen_test_fraction=unseen_test_fraction)
    counts = []
    for f in (unseen_val_fraction, unseen_test_fraction):
        k = int(_round_half_up(f * n_users))
        if f > 0 and n_users >= 3:
            k = max(k, 1)
        counts.append(k)
    n_val, n_test = counts
    # Rounding up both can leave no seen user (e.g. 4 users at 0.45 + 0.45): trim the
    # larger, val on a tie, since test users are the ones results are reported on.
    excess = max(0, n_val + n_test - max(n_users - 1, 0))
    while excess:
        if n_test > n_val:
            n_test -= 1
        else:
            n_val -= 1
        excess -= 1
    perm = np.random.default_rng(seed).permutation(n_users).astype(np.int32)
    return UserSplit(seen=np.sort(perm[n_val + n_test:]),
                     unseen_val=np.sort(perm[:n_val]),
                     unseen_test=np.sort(perm[n_val:n_val + n_test]),
                     seed=int(seed))


@dataclasses.dataclass(frozen=True, eq=False)
class PairSplit:
    """Sorted int64 row indices into a dataset's comparisons (seen users only)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _lookup(users: np.ndarray, size: int, name: str) -> np.ndarray:
    """Table mapping user id -> position in ``users`` (-1 if absent)."""
    if len(users) and users.min() < 0:
        raise ValueError(f"{name} must be >= 0")
    table = np.full(size, -1, np.int64)
    table[users] = np.arange(len(users))
    # A duplicate id keeps only its last position (O(n), unlike np.unique).
    if not np.array_equal(table[users], np.arange(len(users))):
        raise ValueError(f"{name} contains duplicates")
    return table


def _table_size(comparisons: Comparisons, users: np.ndarray) -> int:
    if len(comparisons) and comparisons.user.min() < 0:
        raise ValueError("comparisons have negative user ids; validate the dataset first")
    top = max(int(comparisons.user.max()) if len(comparisons) else -1,
              int(users.max()) if len(users) else -1)
    return top + 1


def split_seen_pairs(comparisons: Comparisons, seen_users: np.ndarray, *, seed: int,
                     val_fraction: float = 0.1, test_fraction: float = 0.1) -> PairSplit:
    """Splits each seen user's comparisons into train / val / test.

    Per user with ``c`` comparisons: ``round(val_fraction·c)`` val and
    ``round(test_fraction·c)`` test pairs, trimmed so that every user keeps at
    least one train pair. Each row's random key is drawn from the seed and the
    row index alone, so a user's split does not change when other users move
    between seen and unseen.
    """
    _check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    seen_users = np.asarray(seen_users, dtype=np.int64)
    user = comparisons.user
    key = np.random.default_rng(seed).integers(0, 2**32, len(user), dtype=np.uint64)  # [N]
    is_seen = _lookup(seen_users, _table_size(comparisons, seen_users), "seen_users") >= 0
    rows = np.flatnonzero(is_seen[user])
    # Sort by (user, random key) as one uint64: 2x faster than np.lexsort; stable so
    # that rare key ties break by row index on every platform.
    order = np.argsort((user[rows].astype(np.uint64) << np.uint64(32)) | key[rows], kind="stable")
    rows, row_user = rows[order], user[rows[order]]

    # Per-user runs in the sorted order -> each row's rank within its user.
    new_user = np.r_[True, row_user[1:] != row_user[:-1]] if len(rows) else np.zeros(0, bool)
    starts = np.flatnonzero(new_user)
    counts = np.diff(np.r_[starts, len(rows)])
    rank = np.arange(len(rows)) - np.repeat(starts, counts)

    n_val = _round_half_up(val_fraction * counts)
    n_test = _round_half_up(test_fraction * counts)
    excess = np.maximum(n_val + n_test - (counts - np.minimum(counts, 1)), 0)
    from_test = np.minimum(excess, n_test)  # trim test first, then val
    n_test -= from_test
    n_val -= excess - from_test
    n_train = counts - n_val - n_test

    rank_train = np.repeat(n_train, counts)
    rank_val = rank_train + np.repeat(n_val, counts)
    return PairSplit(train=np.sort(rows[rank < rank_train]).astype(np.int64),
                     val=np.sort(rows[(rank >= rank_train) & (rank < rank_val)]).astype(np.int64),
                     test=np.sort(rows[rank >= rank_val]).astype(np.int64))


def rows_by_user(comparisons: Comparisons, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups comparison rows by user, CSR-style.

    Returns ``(idx, offsets)``, both int64: the rows of ``users[i]`` are
    ``idx[offsets[i]:offsets[i + 1]]``, in increasing row order.
    """
    users = np.asarray(users, dtype=np.int64)
    position = _lookup(users, _table_size(comparisons, users), "users")[comparisons.user]  # [N]
    rows = np.flatnonzero(position >= 0)
    # Stable sort keeps each user's rows in increasing row order.
    idx = rows[np.argsort(position[rows], kind="stable")].astype(np.int64)
    counts = np.bincount(position[rows], minlength=len(users))
    offsets = np.zeros(len(users) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return idx, offsets
