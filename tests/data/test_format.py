"""Tests for the on-disk dataset format: round trip, every validation error, atomic writes."""

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pluralign.data import FORMAT_VERSION, Comparisons, DatasetError, PreferenceDataset, read_dataset, validate_dataset
from pluralign.data import write_dataset
from pluralign.errors import InputError


def _parts(dtype=np.float32, with_prompts=True):
    """A small valid dataset: 3 users, 6 items (D=4), 2 prompts, 8 comparisons."""
    rng = np.random.default_rng(0)
    items = rng.standard_normal((6, 4)).astype(dtype)
    prompts = rng.standard_normal((2, 4)).astype(dtype) if with_prompts else None
    comparisons = Comparisons.from_arrays(
        user=[0, 0, 1, 1, 1, 2, 2, 0],
        a=[0, 1, 2, 3, 4, 5, 0, 2],
        b=[1, 2, 3, 4, 5, 0, 1, 3],
        label=[1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.25, 1.0],
        prompt=[0, 1, -1, 0, 1, -1, 0, 1] if with_prompts else None,
    )
    return items, prompts, comparisons


def _replace(c: Comparisons, **cols) -> Comparisons:
    arrays = {f: getattr(c, f).copy() for f in ("user", "prompt", "a", "b", "label", "weight")}
    for name, (row, value) in cols.items():
        arrays[name][row] = value
    return Comparisons(**arrays)


@pytest.fixture
def dataset_dir(tmp_path):
    items, prompts, comparisons = _parts()
    return write_dataset(tmp_path / "ds", items, comparisons, prompts=prompts)


def test_round_trip(tmp_path):
    items, prompts, c = _parts()
    c = Comparisons.from_arrays(c.user, c.a, c.b, c.label, prompt=c.prompt,
                                weight=np.linspace(0.5, 2.0, len(c)))
    attributes = np.arange(12, dtype=np.float32).reshape(6, 2)
    attributes[1, 0] = np.nan
    meta = {"source": "test", "encoder": {"model": "m", "layer": -1, "pooling": "mean",
                                          "dim": 4, "dtype": "float32"},
            "user_ids": ["u0", "u1", "u2"], "item_ids": list(range(6)),
            "attribute_names": ["helpful", "verbose"], "licence": "CC-BY-4.0",
            "truth": {"ideal": np.ones((3, 2)), "acc": np.float32(0.75)}}
    path = write_dataset(tmp_path / "ds", items, c, meta=meta, prompts=prompts,
                         attributes=attributes)
    ds = read_dataset(path)
    assert isinstance(ds.items, np.memmap) and isinstance(ds.prompts, np.memmap)
    np.testing.assert_array_equal(ds.items, items)
    np.testing.assert_array_equal(ds.prompts, prompts)
    np.testing.assert_array_equal(ds.attributes, attributes)  # NaN == NaN here
    for col in ("user", "prompt", "a", "b", "label", "weight"):
        np.testing.assert_array_equal(getattr(ds.comparisons, col), getattr(c, col))
        assert getattr(ds.comparisons, col).dtype == getattr(c, col).dtype
    assert ds.meta["format_version"] == FORMAT_VERSION
    assert ds.meta["truth"] == {"ideal": [[1.0, 1.0]] * 3, "acc": 0.75}
    assert ds.meta["user_ids"] == ["u0", "u1", "u2"] and ds.meta["licence"] == "CC-BY-4.0"
    assert (ds.name, ds.n_users, ds.n_items, ds.dim, ds.n_prompts) == ("ds", 3, 6, 4, 2)
    assert ds.path == path and len(ds.comparisons) == 8


def test_float16_items_no_prompts_no_weight_column(tmp_path):
    items, _, c = _parts(np.float16, with_prompts=False)
    path = write_dataset(tmp_path / "ds", items, c, meta={"name": "tiny"})
    assert "weight" not in pq.read_schema(path / "comparisons.parquet").names
    ds = read_dataset(path, mmap=False)
    assert ds.items.dtype == np.float16 and not isinstance(ds.items, np.memmap)
    assert ds.prompts is None and ds.n_prompts == 0 and ds.name == "tiny"
    np.testing.assert_array_equal(ds.comparisons.weight, np.ones(len(c), np.float32))
    np.testing.assert_array_equal(ds.comparisons.prompt, -np.ones(len(c), np.int32))


def test_from_arrays_casts_and_checks():
    c = Comparisons.from_arrays(np.array([0, 1], np.int64), [0, 1], [1, 0], [1, 0])
    assert c.user.dtype == np.int32 and c.label.dtype == np.float32
    assert list(c.prompt) == [-1, -1] and list(c.weight) == [1.0, 1.0]
    assert list(c.take(np.array([1])).a) == [1]
    with pytest.raises(ValueError, match="int32"):
        Comparisons.from_arrays([2**31], [0], [1], [1.0])
    with pytest.raises(TypeError, match="integer"):
        Comparisons.from_arrays([0.5], [0], [1], [1.0])
    with pytest.raises(ValueError, match="length"):
        Comparisons.from_arrays([0, 1], [0], [1], [1.0])


# (column changes, expected message) for invalid comparisons; row 2 has prompt -1.
COMPARISON_ERRORS = [
    ({"a": (2, 4), "b": (2, 4)}, r"comparisons\.parquet row 2: a == b \(item 4\)"),
    ({"user": (5, 3)}, r"comparisons\.parquet row 5: user 3 outside \[0, n_users=3\)"),
    ({"user": (1, -1)}, r"comparisons\.parquet row 1: user -1"),
    ({"a": (4, 6)}, r"comparisons\.parquet row 4: a = 6 outside \[0, n_items=6\)"),
    ({"b": (0, -1)}, r"comparisons\.parquet row 0: b = -1"),
    ({"prompt": (3, 2)}, r"comparisons\.parquet row 3: prompt 2 outside \[-1, n_prompts=2\)"),
    ({"prompt": (3, -2)}, r"comparisons\.parquet row 3: prompt -2"),
    ({"label": (6, np.nan)}, r"comparisons\.parquet row 6: label nan is NaN or outside"),
    ({"label": (7, 1.5)}, r"comparisons\.parquet row 7: label 1\.5"),
    ({"weight": (1, -0.5)}, r"comparisons\.parquet row 1: weight -0\.5"),
    ({"weight": (1, np.inf)}, r"comparisons\.parquet row 1: weight inf"),
    # The earliest bad row is reported, whichever check finds it.
    ({"a": (6, 1), "label": (3, -1.0)}, r"comparisons\.parquet row 3: label -1\.0"),
]


@pytest.mark.parametrize("change,message", COMPARISON_ERRORS)
def test_invalid_comparisons_are_not_written(tmp_path, change, message):
    items, prompts, c = _parts()
    with pytest.raises(DatasetError, match=message) as info:
        write_dataset(tmp_path / "ds", items, _replace(c, **change), prompts=prompts,
                      meta={"n_users": 3})
    assert info.value.file == "comparisons.parquet" and isinstance(info.value.row, int)
    assert isinstance(info.value, InputError)  # a caller catches bad data and bad arguments alike
    assert list(tmp_path.iterdir()) == []


def test_prompt_without_prompts_file(tmp_path):
    items, _, c = _parts()
    with pytest.raises(DatasetError, match=r"row 0: prompt 0 but the dataset has no prompts"):
        write_dataset(tmp_path / "ds", items, c)


def _bad(array, row, col, value):
    array = array.copy()
    array[row, col] = value
    return array


def test_invalid_tables_and_meta(tmp_path):
    items, prompts, c = _parts()
    attributes = np.zeros((6, 2), np.float32)
    cases = [
        (dict(items=_bad(items, 3, 1, np.nan)), r"^items\.npy row 3: contains NaN/inf"),
        (dict(items=_bad(items, 5, 0, -np.inf)), r"^items\.npy row 5: contains NaN/inf"),
        (dict(items=items.astype(np.float64)), r"^items\.npy: dtype float64, expected"),
        (dict(items=items[:, 0]), r"^items\.npy: expected a 2-D array"),
        (dict(prompts=_bad(prompts, 1, 2, np.inf)), r"^prompts\.npy row 1: contains NaN/inf"),
        (dict(prompts=prompts[:, :3]), r"^prompts\.npy: dim 3 != items\.npy dim 4"),
        (dict(attributes=_bad(attributes, 4, 1, np.inf)), r"^attributes\.npy row 4: contains inf"),
        (dict(attributes=attributes[:5]), r"^attributes\.npy: expected shape \[n_items=6"),
        (dict(attributes=attributes.astype(np.float16)), r"^attributes\.npy: dtype float16"),
        (dict(attributes=attributes, meta={"attribute_names": ["x"]}),
         r"^meta\.json: attribute_names has length 1, expected 2"),
        (dict(meta={"attribute_names": ["x"]}), r"^meta\.json: attribute_names given but"),
        (dict(meta={"n_users": 5}), r"^meta\.json: user 3 has no comparisons"),
        (dict(meta={"n_users": "3"}), r"^meta\.json: missing or invalid n_users"),
        (dict(meta={"user_ids": [1, 2]}), r"^meta\.json: user_ids has length 2, expected 3"),
        (dict(meta={"item_ids": [1]}), r"^meta\.json: item_ids has length 1, expected 6"),
        (dict(meta={"encoder": {"dim": 8}}), r"^meta\.json: encoder\.dim 8 != items\.npy dim 4"),
        (dict(meta={"x": object()}), r"^meta\.json: not JSON-serialisable"),
    ]
    for change, message in cases:
        kwargs = dict(items=items, comparisons=c, prompts=prompts) | change
        with pytest.raises(DatasetError, match=message):
            write_dataset(tmp_path / "ds", **kwargs)
        assert list(tmp_path.iterdir()) == [], message


def test_validate_in_memory_dataset():
    items, prompts, c = _parts()
    validate_dataset(PreferenceDataset(items, c, {"n_users": 3}, prompts=prompts))
    wide = Comparisons(**{**{f: getattr(c, f) for f in ("user", "prompt", "a", "b", "label",
                                                        "weight")}, "a": c.a.astype(np.int64)})
    with pytest.raises(DatasetError, match="column 'a' has dtype int64, expected int32"):
        validate_dataset(PreferenceDataset(items, wide, {"n_users": 3}, prompts=prompts))
    nan_items = _bad(items, 2, 0, np.nan)
    validate_dataset(PreferenceDataset(nan_items, c, {"n_users": 3}, prompts=prompts),
                     check_embeddings=False)


# ------------------------------------------------------------ read-side errors

def _table(**overrides) -> pa.Table:
    cols = {"user": pa.array([0, 1, 2], pa.int32()), "prompt": pa.array([-1, -1, -1], pa.int32()),
            "a": pa.array([0, 1, 2], pa.int32()), "b": pa.array([1, 2, 3], pa.int32()),
            "label": pa.array([1.0, 0.0, 1.0], pa.float32())}
    cols.update(overrides)
    return pa.table({k: v for k, v in cols.items() if v is not None})


READ_ERRORS = [
    (_table(a=pa.array([0, 1, 2], pa.int64())),
     r"^comparisons\.parquet: column 'a' has type int64, expected int32"),
    (_table(label=pa.array([1.0, 0.0, 1.0], pa.float64())), r"column 'label' has type double"),
    (_table(label=None), r"^comparisons\.parquet: missing column 'label'"),
    (_table(wieght=pa.array([1.0] * 3, pa.float32())), r"unexpected column\(s\) \['wieght'\]"),
    (_table(b=pa.array([1, 2, 2], pa.int32())), r"^comparisons\.parquet row 2: a == b \(item 2\)"),
    (_table(user=pa.array([0, None, 2], pa.int32())),
     r"^comparisons\.parquet row 1: column 'user' is null"),
    (_table(user=pa.array([0, 1, 1], pa.int32())), r"^meta\.json: user 2 has no comparisons"),
]


@pytest.mark.parametrize("table,message", READ_ERRORS)
def test_read_rejects_corrupt_comparisons(dataset_dir, table, message):
    pq.write_table(table, dataset_dir / "comparisons.parquet")
    with pytest.raises(DatasetError, match=message):
        read_dataset(dataset_dir)


def test_read_rejects_corrupt_files(dataset_dir):
    items = np.load(dataset_dir / "items.npy")
    np.save(dataset_dir / "items.npy", _bad(items, 4, 2, np.nan))
    with pytest.raises(DatasetError, match=r"^items\.npy row 4: contains NaN/inf"):
        read_dataset(dataset_dir)
    assert np.isnan(read_dataset(dataset_dir, validate=False).items[4, 2])
    np.save(dataset_dir / "items.npy", items.astype(np.float64))
    with pytest.raises(DatasetError, match=r"^items\.npy: dtype float64"):
        read_dataset(dataset_dir)
    (dataset_dir / "items.npy").write_bytes(b"not an npy file")
    with pytest.raises(DatasetError, match=r"^items\.npy: cannot load"):
        read_dataset(dataset_dir)


@pytest.mark.parametrize("file", ["items.npy", "comparisons.parquet", "meta.json"])
def test_read_missing_required_file(dataset_dir, file):
    (dataset_dir / file).unlink()
    with pytest.raises(DatasetError, match=rf"^{file}: required file missing"):
        read_dataset(dataset_dir)


def test_read_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        read_dataset(tmp_path / "nope")


def _edit_meta(path: pathlib.Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


def test_read_rejects_bad_meta(dataset_dir):
    _edit_meta(dataset_dir, format_version=FORMAT_VERSION + 1)
    with pytest.raises(DatasetError, match=r"^meta\.json: format_version 2 is newer"):
        read_dataset(dataset_dir)
    _edit_meta(dataset_dir, format_version=None)
    with pytest.raises(DatasetError, match=r"^meta\.json: missing or invalid format_version"):
        read_dataset(dataset_dir)
    _edit_meta(dataset_dir, format_version=FORMAT_VERSION, n_users=None)
    with pytest.raises(DatasetError, match=r"^meta\.json: missing or invalid n_users"):
        read_dataset(dataset_dir)
    _edit_meta(dataset_dir, n_users=2)
    with pytest.raises(DatasetError, match=r"^comparisons\.parquet row 5: user 2 outside"):
        read_dataset(dataset_dir)
    (dataset_dir / "meta.json").write_text('{"format_version": 1,')
    with pytest.raises(DatasetError, match=r"^meta\.json: malformed JSON"):
        read_dataset(dataset_dir)


# ------------------------------------------------------------ atomic writes

def _leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    items, prompts, c = _parts()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset(tmp_path / "ds", items, c, prompts=prompts)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old_dataset(dataset_dir, monkeypatch):
    items, prompts, c = _parts()
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_dataset(dataset_dir, items[:, :2], c, prompts=prompts[:, :2], overwrite=True)
    assert read_dataset(dataset_dir).dim == 4
    assert _leftovers(dataset_dir.parent) == []


def test_overwrite(dataset_dir):
    items, prompts, c = _parts()
    with pytest.raises(FileExistsError):
        write_dataset(dataset_dir, items, c, prompts=prompts)
    old = read_dataset(dataset_dir)  # memmaps of the replaced files must stay readable
    expected = np.array(old.items)
    write_dataset(dataset_dir, items[:, :2] * 2, c, prompts=prompts[:, :2], overwrite=True)
    assert read_dataset(dataset_dir).dim == 2
    np.testing.assert_array_equal(old.items, expected)
    assert _leftovers(dataset_dir.parent) == []


def test_concurrent_writer_gets_file_exists(tmp_path, monkeypatch):
    """Two sweep jobs writing the same cached dataset: the loser sees FileExistsError."""
    items, prompts, c = _parts()
    target = tmp_path / "ds"
    real_write_table = pq.write_table

    def write_then_race(*args, **kwargs):
        real_write_table(*args, **kwargs)
        if not target.exists():
            monkeypatch.setattr(pq, "write_table", real_write_table)
            write_dataset(target, items, c, prompts=prompts)  # the other job wins

    monkeypatch.setattr(pq, "write_table", write_then_race)
    with pytest.raises(FileExistsError):
        write_dataset(target, items, c, prompts=prompts)
    assert read_dataset(target).n_items == 6 and _leftovers(tmp_path) == []
