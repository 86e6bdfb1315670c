"""Repeated comparisons: counted, and no training copy of a held-out comparison survives."""

from __future__ import annotations

import numpy as np

from pluralign.data import Comparisons, split_seen_pairs
from pluralign.data.duplicates import comparison_keys, count_repeats, drop_copies
from pluralign.run import drop_held_out_copies


def with_repeats():
    # Users 0 and 1 make 30 comparisons each; user 0 repeats (2, 3) as (3, 2) and (4, 5) twice.
    user = np.repeat([0, 1], 30)
    a, b = np.tile(np.arange(30), 2), np.tile(np.arange(30) + 100, 2)
    a[[10, 11, 12]], b[[10, 11, 12]] = [103, 4, 4], [3, 104, 104]  # copies of rows 3 and 4
    return Comparisons.from_arrays(user, a, b, np.ones(60))


def test_keys_match_either_order_and_not_other_users_or_prompts():
    c = with_repeats()
    keys = comparison_keys(c)
    assert keys[3] == keys[10] and keys[4] == keys[11] == keys[12]
    assert keys[0] != keys[30]  # same items, another user
    assert count_repeats(c) == 3
    with_prompts = Comparisons.from_arrays(c.user, c.a, c.b, c.label, prompt=np.arange(60) % 2)
    assert count_repeats(with_prompts) == 1  # rows 4 (prompt 0) and 12 (prompt 0) remain; 10, 11 differ


def test_training_copies_of_held_out_comparisons_are_dropped():
    c = with_repeats()
    train, dropped = drop_copies(c, np.array([0, 3, 4, 5, 11, 12]), np.array([10, 20]))
    np.testing.assert_array_equal(train, [0, 4, 5, 11, 12])
    assert dropped == 1
    pairs = split_seen_pairs(c, np.array([0, 1]), seed=0, val_fraction=0.2, test_fraction=0.2)
    kept, counts = drop_held_out_copies(c, pairs)
    held = comparison_keys(c)[np.concatenate([kept.val, kept.test])]
    assert not np.isin(comparison_keys(c)[kept.train], held).any()
    assert counts["repeated_comparisons"] == 3 and counts["training_copies_dropped"] == len(pairs.train) - len(kept.train)
