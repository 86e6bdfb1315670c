"""Tests for user splits, per-user pair splits and CSR grouping of rows by user."""

import json

import numpy as np
import pytest

from pluralign.data import Comparisons, UserSplit, rows_by_user, split_seen_pairs, split_users


def _comparisons(n_users=40, seed=0) -> Comparisons:
    """Users with 0..29 comparisons each, rows shuffled so users interleave."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=n_users)
    user = rng.permutation(np.repeat(np.arange(n_users), counts))
    a = rng.integers(0, 50, size=len(user))
    return Comparisons.from_arrays(user, a, (a + 1) % 50, rng.random(len(user)))


def test_split_users_covers_disjoint_and_sized():
    s = split_users(100, seed=3)
    assert (len(s.seen), len(s.unseen_val), len(s.unseen_test)) == (70, 10, 20)
    joined = np.concatenate([s.seen, s.unseen_val, s.unseen_test])
    np.testing.assert_array_equal(np.sort(joined), np.arange(100))
    for ids in (s.seen, s.unseen_val, s.unseen_test):
        assert ids.dtype == np.int32 and np.all(np.diff(ids) > 0)
    assert s.n_users == 100 and s.seed == 3


def test_split_users_deterministic():
    assert split_users(50, seed=1) == split_users(50, seed=1)
    assert split_users(50, seed=1) != split_users(50, seed=2)
    assert not np.array_equal(split_users(50, seed=1).unseen_test,
                              split_users(50, seed=2).unseen_test)


@pytest.mark.parametrize("n,val,test,sizes", [
    (3, 0.1, 0.2, (1, 1, 1)),       # each nonzero fraction gets at least one user
    (10, 0.0, 0.2, (8, 0, 2)),
    (2, 0.1, 0.2, (2, 0, 0)),
    (4, 0.45, 0.45, (1, 1, 2)),     # rounding up both would leave no seen user
    (0, 0.1, 0.2, (0, 0, 0)),
])
def test_split_users_fractions(n, val, test, sizes):
    s = split_users(n, seed=0, unseen_val_fraction=val, unseen_test_fraction=test)
    assert (len(s.seen), len(s.unseen_val), len(s.unseen_test)) == sizes


@pytest.mark.parametrize("val,test", [(0.5, 0.5), (-0.1, 0.2), (float("nan"), 0.1), (0.9, 0.2)])
def test_split_users_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        split_users(10, seed=0, unseen_val_fraction=val, unseen_test_fraction=test)


def test_user_split_round_trips_through_json():
    s = split_users(30, seed=7)
    restored = UserSplit.from_dict(json.loads(json.dumps(s.to_dict())))
    assert restored == s and restored.seen.dtype == np.int32
    bad = s.to_dict() | {"unseen_val": s.seen[:1].tolist()}
    with pytest.raises(ValueError, match="disjoint"):
        UserSplit.from_dict(bad)


def test_split_seen_pairs_partitions_each_user():
    c = _comparisons()
    seen = split_users(40, seed=0).seen
    p = split_seen_pairs(c, seen, seed=5, val_fraction=0.2, test_fraction=0.1)
    for part in (p.train, p.val, p.test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    joined = np.concatenate([p.train, p.val, p.test])
    np.testing.assert_array_equal(np.sort(joined), np.flatnonzero(np.isin(c.user, seen)))
    for u in seen:
        n = int(np.sum(c.user == u))
        got = [int(np.sum(c.user[part] == u)) for part in (p.train, p.val, p.test)]
        n_val, n_test = int(np.floor(0.2 * n + 0.5)), int(np.floor(0.1 * n + 0.5))
        assert got == [n - n_val - n_test, n_val, n_test], (u, n, got)
        if n >= 1:
            assert got[0] >= 1


def test_split_seen_pairs_keeps_a_train_pair():
    c = Comparisons.from_arrays([0, 0, 0, 1], [0, 1, 2, 0], [1, 2, 3, 1], [1, 1, 1, 1])
    p = split_seen_pairs(c, np.array([0, 1]), seed=0, val_fraction=0.45, test_fraction=0.45)
    assert np.sum(c.user[p.train] == 0) == 1 and np.sum(c.user[p.train] == 1) == 1
    assert len(p.val) + len(p.test) == 2


def test_split_seen_pairs_deterministic_and_local():
    c = _comparisons()
    seen = np.arange(0, 40, 2)
    p1 = split_seen_pairs(c, seen, seed=11)
    p2 = split_seen_pairs(c, seen, seed=11)
    p3 = split_seen_pairs(c, seen, seed=12)
    np.testing.assert_array_equal(p1.val, p2.val)
    np.testing.assert_array_equal(p1.test, p2.test)
    assert not np.array_equal(p1.test, p3.test)
    # A user's pairs do not move when other users join the seen set.
    p4 = split_seen_pairs(c, np.arange(40), seed=11)
    mine = np.isin(c.user[p4.test], seen)
    np.testing.assert_array_equal(p4.test[mine], p1.test)


def test_rows_by_user_matches_naive_loop():
    c = _comparisons()
    users = np.array([7, 3, 39, 0, 12, 100])  # unsorted; 100 has no rows
    idx, offsets = rows_by_user(c, users)
    assert idx.dtype == np.int64 and offsets.shape == (len(users) + 1,)
    for i, u in enumerate(users):
        np.testing.assert_array_equal(idx[offsets[i]:offsets[i + 1]], np.flatnonzero(c.user == u))
    assert offsets[-1] == len(idx) == np.isin(c.user, users).sum()
    with pytest.raises(ValueError, match="duplicates"):
        rows_by_user(c, np.array([1, 1]))
