"""The dataset reader on hostile input: what a run reads from meta.json is checked at load
(truth, ceilings, ids), sparse user numbers are refused without allocating per user, and
(property-based) any malformed dataset directory gets a DatasetError or is read exactly."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pluralign.data import Comparisons, DatasetError, read_dataset, write_dataset

ITEMS = np.eye(4, dtype=np.float32)


def write(tmp_path, meta: dict, users=(0, 1, 1), name="ds"):
    n = len(users)
    comparisons = Comparisons.from_arrays(user=np.asarray(users, np.int32), a=np.zeros(n, np.int32),
                                          b=np.ones(n, np.int32), label=np.ones(n, np.float32))
    root = tmp_path / name
    root.mkdir()
    np.save(root / "items.npy", ITEMS)
    pq.write_table(pa.table({k: getattr(comparisons, k) for k in ("user", "prompt", "a", "b", "label")}),
                   root / "comparisons.parquet")
    (root / "meta.json").write_text(json.dumps({"format_version": 1, "name": name, **meta}))
    return root


@pytest.mark.parametrize("truth, message", [
    ({"user_group": [0]}, r"truth.user_group has shape \(1,\), expected a list of n_users = 2"),
    ({"user_group": [0, -1]}, r"truth.user_group\[1\] = -1"),
    ({"bayes_optimal_accuracy": "high"}, "truth.bayes_optimal_accuracy must be a number in"),
    ({"population_optimal_accuracy": 1.5}, "truth.population_optimal_accuracy must be a number in"),
    ([1, 2], "truth must be an object"),
])
def test_what_a_run_reads_from_truth_is_checked_at_load(tmp_path, truth, message):
    root = write(tmp_path, {"n_users": 2, "truth": truth})
    with pytest.raises(DatasetError, match=f"^meta.json: {message}"):
        read_dataset(root)


def test_null_ceilings_and_ids_mean_absent(tmp_path):
    root = write(tmp_path, {"n_users": 2, "item_ids": None, "user_ids": None,
                            "truth": {"bayes_optimal_accuracy": None, "user_group": [0, 1]}})
    assert read_dataset(root).n_users == 2


def test_sparse_user_numbers_are_refused_before_allocating_per_user(tmp_path):
    root = write(tmp_path, {"n_users": 10**9}, users=(0, 500_000_000, 999_999_999))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"^meta.json: user 1 has no comparisons .*numbered 0 \.\. n_users-1"):
            read_dataset(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"allocated {peak / 2**20:.0f} MiB for 3 comparisons"


def test_writing_sparse_users_is_refused_the_same_way(tmp_path):
    comparisons = Comparisons.from_arrays(user=np.array([0, 2_000_000_000], np.int32), a=np.zeros(2, np.int32),
                                          b=np.ones(2, np.int32), label=np.ones(2, np.float32))
    with pytest.raises(DatasetError, match="user 1 has no comparisons"):
        write_dataset(tmp_path / "out", ITEMS, comparisons)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- property-based


def column_strategy(n: int):
    """A comparisons column of any type the parquet file may hold, sometimes with nulls."""
    small_ints = st.integers(-2, 5)
    values = st.one_of(
        st.lists(small_ints, min_size=n, max_size=n).map(lambda v: pa.array(v, pa.int32())),
        st.lists(small_ints, min_size=n, max_size=n).map(lambda v: pa.array(v, pa.int64())),
        st.lists(st.one_of(st.floats(-1, 2), st.sampled_from([np.nan, np.inf])), min_size=n, max_size=n)
        .map(lambda v: pa.array(v, pa.float32())),
        st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.float32())),
        st.lists(st.text(max_size=3), min_size=n, max_size=n).map(pa.array),
        st.lists(st.one_of(st.none(), small_ints), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.int32())),
    )
    return values


META_OPTIONS = {
    "format_version": [2, "1", None, 1.5],
    "name": [None, 3],
    "n_users": [0, 1, 5, -1, "2", None, True, 10**12],
    "truth": [None, {"user_group": [0]}, {"bayes_optimal_accuracy": "x"}, {"bayes_optimal_accuracy": 0.9}, 7],
    "user_ids": [None, ["u0"], [], "u"],
    "item_ids": [None, [0], "i"],
    "encoder": [None, {"dim": 2}, {"dim": 3}, "enc"],
}


@st.composite
def dataset_dirs(draw):
    """A valid dataset, then up to three random corruptions of its files."""
    n_users, n_items = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    items = np.arange(n_items * 2, dtype=np.float32).reshape(n_items, 2)
    per_user = draw(st.lists(st.integers(1, 3), min_size=n_users, max_size=n_users))
    user = np.repeat(np.arange(n_users), per_user).astype(np.int32)
    n = len(user)
    a = np.asarray(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), np.int32)
    b = ((a + np.asarray(draw(st.lists(st.integers(1, n_items - 1), min_size=n, max_size=n)))) % n_items).astype(np.int32)
    label = np.asarray(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=n, max_size=n)), np.float32)
    columns = {"user": pa.array(user), "prompt": pa.array(np.full(n, -1, np.int32)), "a": pa.array(a), "b": pa.array(b),
               "label": pa.array(label)}
    meta = {"format_version": 1, "name": "d", "n_users": n_users}
    meta_text = None
    for corruption in draw(st.lists(st.sampled_from(["column", "drop", "extra", "meta", "json", "items"]), max_size=3)):
        if corruption == "column":
            columns[draw(st.sampled_from(["user", "a", "b", "label", "weight", "prompt"]))] = draw(column_strategy(n))
        elif corruption == "drop":
            columns.pop(draw(st.sampled_from(sorted(columns))), None)
        elif corruption == "extra":
            columns["extra"] = pa.array(np.zeros(n, np.int32))
        elif corruption == "meta":
            key = draw(st.sampled_from(sorted(META_OPTIONS)))
            meta[key] = draw(st.sampled_from(META_OPTIONS[key]))
        elif corruption == "json":
            meta_text = draw(st.sampled_from(["{", "[]", "null", "\xff", '{"format_version": 1}']))
        elif corruption == "items":
            valid = np.arange(n_items * 2, dtype=np.float32).reshape(n_items, 2)
            items = draw(st.sampled_from([valid.astype(np.float64), valid[:, :0], valid[:1], valid.reshape(-1),
                                          np.where(valid == 1, np.nan, valid).astype(np.float32)]))
    return items, columns, meta_text if meta_text is not None else json.dumps(meta)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=dataset_dirs())
def test_any_dataset_directory_is_read_exactly_or_refused_with_a_dataset_error(tmp_path_factory, case):
    items, columns, meta_text = case
    root = tmp_path_factory.mktemp("ds")
    np.save(root / "items.npy", items)
    pq.write_table(pa.table(columns) if columns else pa.table({"empty": pa.array([], pa.int32())}),
                   root / "comparisons.parquet")
    (root / "meta.json").write_text(meta_text)
    try:
        ds = read_dataset(root)
    except DatasetError as e:
        event(f"refused: {e.file}")
        return
    event("read")
    # Read: exactly what was written, and everything a run relies on holds.
    meta = json.loads(meta_text)
    assert ds.n_users == meta["n_users"] and ds.items.shape == items.shape
    np.testing.assert_array_equal(np.asarray(ds.items), items)
    for name in ("user", "a", "b", "label"):
        np.testing.assert_array_equal(getattr(ds.comparisons, name), columns[name].to_numpy(zero_copy_only=False))
    c = ds.comparisons
    assert len(c) == 0 or (c.user.min() >= 0 and c.user.max() < ds.n_users and c.a.max() < ds.n_items)
    assert np.all((c.label >= 0) & (c.label <= 1)) and np.all(c.a != c.b)
    assert len(np.unique(c.user)) == ds.n_users
