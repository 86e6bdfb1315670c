"""Relabelled HH-RLHF: the objective is the user type; labels follow the relabelled preference."""

import gzip
import json
import pathlib

import numpy as np
import pytest

from pluralign.data import DatasetError, validate_dataset
from pluralign.embed import Encoder
from pluralign.data.hh_rlhf import HHRLHFConfig, load_hh_rlhf, make_hh_rlhf

SHARED = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "relabeled_hh_rlhf"


def _fixture(folder: pathlib.Path, n=60, bad=None) -> pathlib.Path:
    """``both_test.jsonl.gz`` in the source schema; replies say which row and side they are."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        objective = "helpful" if i % 3 else "harmless"
        responses = [f"reply {i} first", f"reply {i} second"]
        label = i % 2
        rows.append({"Index": i, "prompt": f"Human: question {i % 20}?", "responses": responses,
                     "label": label, "original_label": 1 - label if i % 5 == 0 else label,
                     "objective": objective, "data_subset": "helpful",
                     "chosen": f"Human: question {i % 20}?\n\nAssistant: {responses[label]}",
                     "rejected": f"Human: question {i % 20}?\n\nAssistant: {responses[1 - label]}"})
    if bad:
        rows[bad[0]].update(bad[1])
    with gzip.open(folder / "both_test.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    return folder


class _LookupEncoder(Encoder):
    dim = 2

    def __init__(self, texts):
        self.texts = texts
        self.index = {t: i for i, t in enumerate(texts)}

    def describe(self):
        return {"kind": "lookup", "dim": 2}

    def _encode_batch(self, texts):
        return np.array([[self.index[t], 1.0] for t in texts], np.float32)


def test_objective_is_the_user_type_and_labels_follow_it(tmp_path):
    folder = _fixture(tmp_path / "hh")
    # A lookup "encoder" writes each text's id into its vector, so every item row names its text.
    table = load_hh_rlhf(folder)
    reply_of = {}
    for r in range(table.num_rows):
        reply_of[table.column("preferred")[r].as_py()] = (r, True)
        reply_of[table.column("other")[r].as_py()] = (r, False)
    lookup = _LookupEncoder(list(reply_of) + sorted(set(table.column("prompt").to_pylist())))
    ds = make_hh_rlhf(HHRLHFConfig(path=str(folder), comparisons_per_user=5, seed=2, encoder=lookup))
    validate_dataset(ds)
    c = ds.comparisons
    group = np.asarray(ds.meta["truth"]["user_group"])
    assert ds.meta["truth"]["group_names"] == ["helpful", "harmless"]
    assert np.bincount(group).tolist() == [40 // 5, 20 // 5]  # 40 helpful rows, 20 harmless rows
    texts = {row: lookup.texts[int(v)] for row, v in enumerate(ds.items[:, 0])}
    for u, a, b, y in zip(c.user, c.a, c.b, c.label):
        row_a, a_pref = reply_of[texts[a]]
        row_b, b_pref = reply_of[texts[b]]
        assert row_a == row_b                                        # the two replies of one row
        i = int(texts[a].split()[1])
        assert group[u] == (0 if i % 3 else 1)                       # user's type = the row's objective
        assert y == (1.0 if a_pref else 0.0) and a_pref != b_pref    # label = the relabelled preference
        assert texts[a if y == 1 else b] == f"reply {i} {'first' if i % 2 == 0 else 'second'}"
    assert len(set(zip(c.user, c.a))) == len(c)                     # no user holds a row twice


def test_reuse_deals_each_row_to_distinct_users(tmp_path):
    folder = _fixture(tmp_path / "hh")
    ds = make_hh_rlhf(HHRLHFConfig(path=str(folder), comparisons_per_user=10, reuse=3))
    c = ds.comparisons
    pairs = set(zip(c.user.tolist(), np.minimum(c.a, c.b).tolist()))
    assert len(pairs) == len(c)                                      # no user holds a row twice
    _, per_row = np.unique(np.minimum(c.a, c.b), return_counts=True)
    assert set(per_row.tolist()) == {3}                              # every row dealt to 3 users
    assert ds.n_users == 3 * (40 // 10 + 20 // 10)


def test_bad_rows_are_named(tmp_path):
    folder = _fixture(tmp_path / "a", bad=(7, {"objective": "honest"}))
    with pytest.raises(DatasetError, match=r"both_test.jsonl.gz row 7: objective 'honest'"):
        load_hh_rlhf(folder)
    folder = _fixture(tmp_path / "b", bad=(3, {"label": 2}))
    with pytest.raises(DatasetError, match=r"row 3: label 2 is not 0 or 1"):
        load_hh_rlhf(folder)
    with pytest.raises(DatasetError, match="no such file"):
        load_hh_rlhf(tmp_path / "a", subset="helpful")


@pytest.mark.skipif(not SHARED.is_dir(), reason="relabeled_hh_rlhf not available")
def test_real_relabelled_file():
    ds = make_hh_rlhf(HHRLHFConfig(path=str(SHARED), comparisons_per_user=20, max_comparisons=400))
    validate_dataset(ds)
    assert set(ds.meta["truth"]["user_group"]) == {0, 1} and ds.prompts is not None
