"""Importers on hostile input: ids are exact strings, bad text names its file and row, any
character may be inside a text, and (property-based) any malformed table gets a DatasetError
or a correct dataset, never another exception."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pluralign.data import DatasetError
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
