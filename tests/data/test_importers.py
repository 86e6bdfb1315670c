"""Comparisons / ratings table importers: correctness of the conversion and clear errors."""

import itertools
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pluralign.data import DatasetError, read_dataset, write_dataset
from pluralign.data.importers import (
    ComparisonsTableConfig,
    import_comparisons,
    import_ratings,
    ratings_to_comparisons,
    within_group_pairs,
)
from pluralign.data.sources import load_dataset


def _comparisons_table():
    return pa.table({
        "worker": ["w2", "w1", "w2", "w1", "w3"],
        "question": ["q1", "q1", "q2", "q2", "q1"],
        "left": ["yes", "no", "maybe", "yes", "no"],
        "right": ["no", "yes", "yes", "maybe", "maybe"],
        "p_left": [1.0, 0.0, 0.5, 1.0, 0.25],
    })


def test_comparisons_csv_texts_dedup_and_user_map(tmp_path):
    path = tmp_path / "prefs.csv"
    pcsv.write_csv(_comparisons_table(), path)
    ds = import_comparisons(path, user="worker", a="left", b="right", label="p_left", prompt="question")
    c = ds.comparisons
    assert ds.meta["user_ids"] == ["w1", "w2", "w3"]           # sorted, contiguous
    np.testing.assert_array_equal(c.user, [1, 0, 1, 0, 2])
    assert ds.items.shape == (3, 256) and ds.prompts.shape == (2, 256)  # 3 distinct replies, 2 prompts
    # The same text maps to the same row, different texts to different rows.
    texts = np.array(["yes", "no", "maybe", "yes", "no", "no", "yes", "yes", "maybe", "maybe"])
    rows = np.concatenate([c.a, c.b])
    for t in set(texts):
        assert len(set(rows[texts == t])) == 1
    assert len(set(rows)) == 3
    assert c.prompt[0] == c.prompt[1] == c.prompt[4] != c.prompt[2]
    np.testing.assert_allclose(c.label, [1.0, 0.0, 0.5, 1.0, 0.25])
    assert ds.meta["encoder"]["kind"] == "wordllama"
    out = write_dataset(tmp_path / "ds", ds.items, c, meta=ds.meta, prompts=ds.prompts)
    assert read_dataset(out).meta["user_ids"] == ["w1", "w2", "w3"]


def test_comparisons_ids_into_feature_matrix_jsonl(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"user": 7, "chosen": "i2", "rejected": "i0"}, {"user": 3, "chosen": "i1", "rejected": "i2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items = np.arange(12, dtype=np.float32).reshape(3, 4)
    ds = import_comparisons(path, a="chosen", b="rejected", label=None, items=items, item_ids=["i0", "i1", "i2"])
    np.testing.assert_array_equal(ds.comparisons.a, [2, 1])
    np.testing.assert_array_equal(ds.comparisons.b, [0, 2])
    np.testing.assert_array_equal(ds.comparisons.label, [1, 1])  # no label column: a was chosen
    np.testing.assert_array_equal(ds.comparisons.user, [1, 0])
    assert ds.meta["user_ids"] == [3, 7] and "encoder" not in ds.meta


@pytest.mark.parametrize("change, message, row", [
    (lambda t: t.drop_columns(["p_left"]), "missing label column 'p_left'", None),
    (lambda t: t.set_column(0, "worker", pa.array(["w1", None, "w2", "w2", "w1"])), "column 'worker' is null", 1),
    (lambda t: t.set_column(0, "worker", pa.array(["w1", "w1", "", "w2", "w1"])), "column 'worker' is empty", 2),
    (lambda t: t.set_column(4, "p_left", pa.array([1.0, 0.0, 0.5, 1.5, 0.0])), "label 1.5", 3),
    (lambda t: t.set_column(3, "right", pa.array(["no", "yes", "yes", "maybe", "no"])), "same item", 4),
])
def test_comparisons_errors_name_file_row_problem(tmp_path, change, message, row):
    path = tmp_path / "bad.parquet"
    pq.write_table(change(_comparisons_table()), path)
    with pytest.raises(DatasetError) as e:
        import_comparisons(path, user="worker", a="left", b="right", label="p_left", prompt="question")
    assert e.value.file == "bad.parquet" and message in e.value.problem and e.value.row == row


def test_winner_column_strings_automatic_and_index_on_request(tmp_path):
    items, ids = np.eye(3, dtype=np.float32), ["x", "y", "z"]
    path = tmp_path / "prefs.csv"
    pcsv.write_csv(pa.table({"user": [1, 1, 2, 2], "a": ["x", "y", "z", "x"], "b": ["y", "z", "x", "z"],
                             "winner": ["A", "b", " a ", "Tie"]}), path)
    ds = import_comparisons(path, label="winner", items=items, item_ids=ids)  # strings: a winner column
    np.testing.assert_array_equal(ds.comparisons.label, [1.0, 0.0, 1.0, 0.5])
    # integers are P(a ≻ b) unless label_format=winner says they are the winner's index (0 = a)
    pcsv.write_csv(pa.table({"user": [1, 2], "a": ["x", "y"], "b": ["y", "z"], "winner": [0, 1]}), path)
    np.testing.assert_array_equal(import_comparisons(path, label="winner", items=items, item_ids=ids).comparisons.label, [0, 1])
    np.testing.assert_array_equal(
        import_comparisons(path, label="winner", label_format="winner", items=items, item_ids=ids).comparisons.label, [1, 0])


@pytest.mark.parametrize("values, label_format, message, row", [
    (["a", "c"], "auto", "winner 'winner' is 'c'; expected 'a', 'b'", 1),
    (["a", None], "auto", "column 'winner' is null", 1),
    ([0, 2], "winner", "winner 'winner' is 2; expected the winner's index", 1),
])
def test_bad_winner_names_the_row(tmp_path, values, label_format, message, row):
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.table({"user": [1, 2], "a": ["x", "y"], "b": ["y", "z"], "winner": values}), path)
    with pytest.raises(DatasetError) as e:
        import_comparisons(path, label="winner", label_format=label_format, items=np.eye(3, dtype=np.float32),
                           item_ids=["x", "y", "z"])
    assert message in e.value.problem and e.value.row == row


def test_unknown_item_id_names_row(tmp_path):
    path = tmp_path / "prefs.csv"
    pcsv.write_csv(pa.table({"user": [1, 1, 2], "a": ["x", "y", "zz"], "b": ["y", "x", "x"], "label": [1, 0, 1]}), path)
    with pytest.raises(DatasetError, match=r"prefs.csv row 2: unknown item id 'zz' in column 'a'"):
        import_comparisons(path, items=np.zeros((2, 3), np.float32), item_ids=["x", "y"])
    pcsv.write_csv(pa.table({"user": [1, 2], "a": [0, 5], "b": [1, 0], "label": [1, 0]}), path)
    with pytest.raises(DatasetError, match=r"row 1: unknown item id 5"):
        import_comparisons(path, items=np.zeros((2, 3), np.float32))


def test_within_group_pairs_are_all_pairs_of_each_group():
    group = np.array([3, 1, 3, 3, 1, 7])
    i, j = within_group_pairs(group)
    got = sorted(tuple(sorted(p)) for p in zip(i, j))
    want = sorted(tuple(sorted(p)) for g in set(group)
                  for p in itertools.combinations(np.flatnonzero(group == g), 2))
    assert got == want
    big = np.repeat(np.arange(4), 30)  # 435 pairs per group, capped at 50
    i, j = within_group_pairs(big, max_pairs_per_group=50, seed=1)
    assert np.all(big[i] == big[j]) and np.all(np.bincount(big[i]) == 50)
    assert len(set(zip(i, j))) == len(i)


@pytest.mark.parametrize("ties", ["drop", "soft"])
def test_ratings_to_comparisons_labels_follow_ratings(ties):
    rng = np.random.default_rng(0)
    user = rng.integers(20, size=400)
    item = rng.integers(50, size=400)
    rating = rng.integers(1, 4, size=400).astype(float)
    out = ratings_to_comparisons(user, item, rating, ties=ties, seed=3)
    ra, rb, label = out["row_a"], out["row_b"], out["label"]
    assert np.all(user[ra] == user[rb]) and np.all(item[ra] != item[rb])
    diff = rating[ra] - rating[rb]
    np.testing.assert_array_equal(label, np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5)))
    if ties == "drop":
        assert np.all(diff != 0)
    else:
        assert np.any(label == 0.5)
    # Every within-user pair of distinct items (minus ties when dropped) is there, once.
    expected = sum(1 for u in range(20) for p, q in itertools.combinations(np.flatnonzero(user == u), 2)
                   if item[p] != item[q] and (ties == "soft" or rating[p] != rating[q]))
    assert len(label) == expected
    assert 0.3 < np.mean(label[label != 0.5]) < 0.7  # orientation randomised


def test_import_ratings_prompt_groups_and_empty_users(tmp_path):
    table = pa.table({"user": ["a", "a", "a", "b", "b", "c"], "item": [0, 1, 2, 0, 1, 2],
                      "stars": [5, 1, 3, 2, 2, 4], "prompt": [0, 0, 1, 0, 0, 1]})
    path = tmp_path / "ratings.parquet"
    pq.write_table(table, path)
    feats = np.eye(3, dtype=np.float32)
    # Only items rated for the same prompt are compared: user a has one pair (items 0, 1).
    ds = import_ratings(path, rating="stars", prompt="prompt", items=feats, prompts=np.ones((2, 3), np.float32),
                        ties="soft", empty_users="drop")
    c = ds.comparisons
    assert ds.meta["user_ids"] == ["a", "b"] and ds.meta["dropped_users"] == ["c"]
    assert len(c) == 2 and set(c.prompt) == {0}
    a_row = np.flatnonzero(c.user == 0)[0]
    assert c.label[a_row] == (1.0 if c.a[a_row] == 0 else 0.0)   # item 0 (5 stars) beats item 1 (1 star)
    assert c.label[np.flatnonzero(c.user == 1)[0]] == 0.5          # b's tie, soft-labelled
    # With ties dropped, b's only pair is gone too: the first empty user is named, with its first row.
    with pytest.raises(DatasetError, match=r"ratings.parquet row 3: user 'b' \(2 rating\(s\)\) yields no "
                                           r"comparison \(2 such users"):
        import_ratings(path, rating="stars", prompt="prompt", items=feats, prompts=np.ones((2, 3), np.float32))
    with pytest.raises(DatasetError, match="missing rating column 'rating'"):
        import_ratings(path, items=feats)


def test_comparisons_table_data_kind_cache_follows_the_file(tmp_path):
    path = tmp_path / "prefs.csv"
    pcsv.write_csv(_comparisons_table(), path)
    config = ComparisonsTableConfig(path=str(path), user="worker", a="left", b="right", label="p_left")
    ds = load_dataset(config, cache_dir=tmp_path / "cache")
    assert ds.n_users == 3 and len(ds.comparisons) == 5
    pcsv.write_csv(_comparisons_table().slice(0, 4), path)   # the source changes: rebuilt, not stale
    os.utime(path, ns=(0, 10**18))
    assert len(load_dataset(config, cache_dir=tmp_path / "cache").comparisons) == 4
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2
