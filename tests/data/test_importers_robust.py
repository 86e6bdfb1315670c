"""Importers on hostile input: ids are exact strings, bad text names its file and row, any
character may be inside a text, and (property-based) any malformed table gets a DatasetError
or a correct dataset, never another exception."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pluralign.data import DatasetError, read_dataset, write_dataset
from pluralign.data.importers import import_comparisons, import_ratings
from pluralign.embed.encoders import Encoder

ITEMS = np.arange(12, dtype=np.float32).reshape(3, 4)


def test_csv_ids_are_read_as_written_not_as_numbers(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("user,a,b\n007,0,1\n7,1,2\n"
                    "18446744073709551616,0,2\n18446744073709551617,2,1\n")
    ds = import_comparisons(path, label=None, items=ITEMS)
    assert ds.meta["n_users"] == 4, "'007' and '7', or two ids above int64, were merged"
    assert sorted(ds.meta["user_ids"]) == ["007", "18446744073709551616", "18446744073709551617", "7"]
    np.testing.assert_array_equal(ds.comparisons.a, [0, 1, 0, 2])  # row numbers still parse


def test_ratings_csv_ids_are_read_as_written(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n007,0,1\n007,1,2\n7,0,2\n7,2,1\n")
    ds = import_ratings(path, items=ITEMS)
    assert sorted(ds.meta["user_ids"]) == ["007", "7"]
    assert len(ds.comparisons) == 2


def test_json_ids_beyond_int64_are_refused_not_merged(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = ['{"user": 18446744073709551616, "a": 0, "b": 1}', '{"user": 18446744073709551617, "a": 1, "b": 2}']
    path.write_text("\n".join(rows))
    with pytest.raises(DatasetError, match="prefs.jsonl: column 'user' holds floating-point numbers"):
        import_comparisons(path, label=None, items=ITEMS)
    path.write_text("\n".join(r.replace(': 1844', ': "1844').replace('6, "a"', '6", "a"').replace('7, "a"', '7", "a"')
                              for r in rows))
    assert import_comparisons(path, label=None, items=ITEMS).meta["n_users"] == 2


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_text_names_file_and_row(tmp_path, suffix):
    path = tmp_path / f"prefs{suffix}"
    if suffix == ".csv":
        path.write_bytes(b"user,a,b\nu1,hello,world\nu2,caf\xe9,tea\n")
        where = r"prefs.csv row 1: column 'a' is not valid UTF-8"
    else:
        path.write_bytes(b'{"user": "u1", "a": "hello", "b": "world"}\n{"user": "u2", "a": "caf\xe9", "b": "tea"}\n')
        where = r"prefs.jsonl row 1: (column .a. is )?not valid UTF-8"
    with pytest.raises(DatasetError, match=where):
        import_comparisons(path, label=None)


class Recorder(Encoder):
    """Records what it is asked to embed; a distinct vector per distinct text."""

    dim = 4

    def __init__(self):
        self.seen = []

    def describe(self):
        return {"name": "recorder", "dim": self.dim}

    def _encode_batch(self, texts):
        self.seen.extend(texts)
        return np.stack([np.r_[float(len(self.seen)), float(i), 1.0, 2.0] for i, _ in enumerate(texts)]).astype(np.float32)


def test_a_nul_inside_a_text_does_not_make_two_pairs_share_an_embedding():
    # With a NUL-joined key, ("p\0x", "y") and ("p", "x\0y") were one item.
    table = pa.table({"user": ["u", "u"], "prompt": ["p\x00x", "p"], "a": ["y", "x\x00y"], "b": ["z", "z"]})
    recorder = Recorder()
    ds = import_comparisons(table, label=None, prompt="prompt", embed_with_prompt=True, encoder=recorder)
    assert ds.comparisons.a[0] != ds.comparisons.a[1]
    pairs = [t for t in recorder.seen if isinstance(t, tuple)]
    assert sorted(pairs) == sorted([("p\x00x", "y"), ("p\x00x", "z"), ("p", "x\x00y"), ("p", "z")])


# ----------------------------------------------------------------- property-based

# Cells of a CSV without quoting: ids that look like numbers (leading zeros, beyond int64,
# decimals, signs), words, unicode, empty cells, and bytes that are not UTF-8; each column
# mostly valid so that both outcomes are exercised.
ANY_CELL = st.one_of(
    st.sampled_from([c.encode() for c in ["0", "1", "2", "3", "007", "7", "-1", "1.5", "nan", "", "ü", "日本", "null",
                                          "18446744073709551616", " 2", "2 "]] + [b"caf\xe9", b"\xff"]),
    st.text(alphabet="abc019", min_size=1, max_size=4).map(str.encode),
)


@st.composite
def tables(draw, *good_columns: list[str]):
    """1-6 rows of cells drawn from each column's valid values, then up to two cells replaced by any cell."""
    n = draw(st.integers(1, 6))
    rows = [[draw(st.sampled_from(good)).encode() for good in good_columns] for _ in range(n)]
    for _ in range(draw(st.integers(0, 2))):
        rows[draw(st.integers(0, n - 1))][draw(st.integers(0, len(good_columns) - 1))] = draw(ANY_CELL)
    return rows


USERS = ["007", "7", "u1", "ü", "18446744073709551616", "18446744073709551617"]


def csv_bytes(header: list[str], rows: list[list[bytes]]) -> bytes:
    return b"\n".join([",".join(header).encode()] + [b",".join(row) for row in rows]) + b"\n"


def expected_label(cell: bytes, rows) -> float:
    """P(a ≻ b) as the importer reads a label cell: a number, or, in a column that is not all
    numbers (label_format=auto), a winner word ('a' / 'b' / 'tie' / 'draw', any case)."""
    def number(c):
        try:
            return float(c)
        except ValueError:
            return None
    if all(number(r[3]) is not None for r in rows):
        return float(cell)
    return {"a": 1.0, "b": 0.0, "tie": 0.5, "draw": 0.5}[cell.decode().strip().lower()]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables(USERS, ["0", "1", "2"], ["0", "1", "2"], ["0", "1", "0.5", "0.25"]))
def test_any_comparisons_csv_is_imported_exactly_or_refused_with_a_dataset_error(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("imp")
    path = root / "prefs.csv"
    path.write_bytes(csv_bytes(["user", "a", "b", "label"], rows))
    try:
        ds = import_comparisons(path, items=ITEMS)
    except DatasetError as e:
        event(f"refused: {e.problem[:30]}")
        return
    event("imported")
    users = [r[0].decode() for r in rows]
    assert ds.meta["user_ids"] == sorted(set(users)), "ids are the strings as written, each its own user"
    assert [ds.meta["user_ids"][u] for u in ds.comparisons.user] == users
    np.testing.assert_array_equal(ds.comparisons.a, [int(r[1]) for r in rows])
    np.testing.assert_array_equal(ds.comparisons.b, [int(r[2]) for r in rows])
    np.testing.assert_array_equal(ds.comparisons.label, np.float32([expected_label(r[3], rows) for r in rows]))
    out = write_dataset(root / "out", ds.items, ds.comparisons, meta=ds.meta)  # valid: writes and reads back
    np.testing.assert_array_equal(read_dataset(out).comparisons.user, ds.comparisons.user)


class HashEncoder(Encoder):
    """A distinct, deterministic vector per text; no model to load."""

    dim = 4

    def describe(self):
        return {"name": "hash", "dim": self.dim}

    def _encode_batch(self, texts):
        return np.stack([self.vector(t) for t in texts])

    @staticmethod
    def vector(text) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(repr(text).encode()).digest()[:16], np.uint32).astype(np.float32) / 2**32


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables(USERS[:2], ["x", "y", "z", "ü", "7", "007"], ["1", "2", "3", "2.5"]),
       ties=st.sampled_from(["drop", "soft"]), empty_users=st.sampled_from(["error", "drop"]))
def test_any_ratings_csv_of_texts_is_imported_correctly_or_refused(tmp_path_factory, rows, ties, empty_users):
    root = tmp_path_factory.mktemp("imp")
    path = root / "ratings.csv"
    path.write_bytes(csv_bytes(["user", "item", "rating"], rows))
    try:
        ds = import_ratings(path, encoder=HashEncoder(), ties=ties, empty_users=empty_users)
    except DatasetError as e:
        event(f"refused: {e.problem[:30]}")
        return
    event("imported")
    ratings = {}  # (user, item text) -> its ratings
    for user, item, value in rows:
        ratings.setdefault((user.decode(), item.decode()), []).append(float(value))
    text_of = {HashEncoder.vector(text).tobytes(): text for _, text in ratings}
    c = ds.comparisons
    for u, a, b, label in zip(c.user, c.a, c.b, c.label):
        user = ds.meta["user_ids"][u]
        ta, tb = text_of[np.asarray(ds.items[a]).tobytes()], text_of[np.asarray(ds.items[b]).tobytes()]
        assert ta != tb
        ra, rb = ratings[(user, ta)], ratings[(user, tb)]
        if len(ra) == len(rb) == 1:  # the label follows the ratings exactly
            assert label == (1.0 if ra[0] > rb[0] else 0.0 if ra[0] < rb[0] else 0.5)
            assert ties == "soft" or label != 0.5
    kept = set(ds.meta["user_ids"])
    assert kept | set(ds.meta["dropped_users"]) == {user for user, _ in ratings}
    for user in kept:  # a kept user has two differently rated items
        assert len({t for (uu, t) in ratings if uu == user}) >= 2


JSON_IDS = st.one_of(  # a column of integer ids, of string ids, or of anything
    st.lists(st.sampled_from([7, 8, 9, 2**62]), min_size=1, max_size=5),
    st.lists(st.sampled_from(["7", "007", "ü", "18446744073709551616"]), min_size=1, max_size=5),
    st.lists(st.sampled_from([7, "7", 1.5, 2**64, None, True, "", [1], {"id": 1}]), min_size=1, max_size=5),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=JSON_IDS, data=st.data())
def test_any_comparisons_jsonl_is_imported_exactly_or_refused_with_a_dataset_error(tmp_path_factory, users, data):
    rows = [{"user": u, "a": data.draw(st.sampled_from([0, 1, "2", 5])), "b": 2} for u in users]
    path = tmp_path_factory.mktemp("imp") / "prefs.jsonl"
    path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows))
    try:
        ds = import_comparisons(path, label=None, items=ITEMS)
    except DatasetError as e:
        event(f"refused: {e.problem[:30]}")
        return
    event("imported")
    assert [ds.meta["user_ids"][u] for u in ds.comparisons.user] == users, "ids are the values as written"
    np.testing.assert_array_equal(ds.comparisons.a, [int(r["a"]) for r in rows])
