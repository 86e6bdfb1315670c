"""Hub dataset parsers on small local fixtures in each dataset's published schema (no network)."""

import numpy as np
import pyarrow as pa
import pytest

from pluralign.data import DatasetError, validate_dataset
from pluralign.data.hub import (
    helpsteer2_dataset,
    pickapic_comparisons,
    prism_ratings,
    summarize_comparisons,
    ultrafeedback_p,
    ultrafeedback_ratings,
)
from pluralign.data.importers import import_comparisons, import_ratings
from pluralign.embed import Encoder


class _LookupEncoder(Encoder):
    """Writes each text's index into its vector, so a dataset's item rows name their texts."""
    dim = 2

    def __init__(self, texts):
        self.index = {t: i for i, t in enumerate(texts)}

    def describe(self):
        return {"kind": "lookup", "dim": 2}

    def _encode_batch(self, texts):
        return np.array([[self.index[t], 1.0] for t in texts], np.float32)


def _tldr(i, worker, choice, post=True):
    info = {"id": f"t3_{i}", "post": f"my post {i}" if post else None, "title": "t", "subreddit": "r",
            "site": None, "article": None if post else f"news article {i}"}
    return {"info": info, "summaries": [{"text": f"summary {i} A", "policy": "sup", "note": None},
                                        {"text": f"summary {i} B", "policy": "ppo", "note": None}],
            "choice": choice, "worker": worker, "batch": "b1", "split": "train", "extra": {"confidence": 7}}


def test_summarize_from_feedback_workers_are_users():
    records = [_tldr(0, "w9", 0), _tldr(1, "w2", 1), _tldr(2, "w9", 1, post=False), _tldr(3, "w2", 0)]
    table = summarize_comparisons(records)
    assert table.column("label").to_pylist() == [1.0, 0.0, 0.0, 1.0]   # choice 0 -> summary a preferred
    assert table.column("prompt").to_pylist()[2] == "news article 2"    # CNN/DM rows carry an article
    ds = import_comparisons(table, prompt="prompt")
    validate_dataset(ds)
    assert ds.meta["user_ids"] == ["w2", "w9"] and ds.n_items == 8 and ds.n_prompts == 4
    np.testing.assert_array_equal(ds.comparisons.user, [1, 0, 1, 0])
    bad = _tldr(4, "w1", 2)
    with pytest.raises(DatasetError, match="row 4: choice 2"):
        summarize_comparisons(records + [bad])


def test_prism_turn_ratings_become_within_turn_comparisons():
    def conv(cid, uid, turns):
        history = []
        for t, (prompt, scores) in enumerate(turns):
            history.append({"turn": t, "role": "user", "content": prompt, "model_name": None, "score": None,
                            "if_chosen": None, "within_turn_id": None})
            for k, s in enumerate(scores):
                history.append({"turn": t, "role": "model", "content": f"{cid} t{t} reply {k}", "model_name": "m",
                                "score": s, "if_chosen": k == int(np.argmax(scores)), "within_turn_id": k})
        return {"conversation_id": cid, "user_id": uid, "conversation_history": history}

    records = [conv("c1", "u1", [("hi", [80, 20, 50]), ("more", [10, 90])]),
               conv("c2", "u2", [("hi", [30, 60])])]
    ratings = prism_ratings(records)
    assert ratings.num_rows == 7
    assert ratings.column("prompt").to_pylist() == ["hi"] * 3 + ["more"] * 2 + ["hi"] * 2
    texts = ratings.column("item").to_pylist() + sorted(set(ratings.column("prompt").to_pylist()))
    lookup = _LookupEncoder(texts)
    ds = import_ratings(ratings, prompt="prompt", group="group", encoder=lookup)
    validate_dataset(ds)
    c = ds.comparisons
    assert len(c) == 3 + 1 + 1                                   # pairs within each turn only
    assert ds.meta["user_ids"] == ["u1", "u2"]
    score = dict(zip(ratings.column("item").to_pylist(), ratings.column("rating").to_pylist()))
    name = [texts[int(v)] for v in ds.items[:, 0]]
    for a, b, y in zip(c.a, c.b, c.label):
        assert name[a].split(" reply")[0] == name[b].split(" reply")[0]   # same conversation turn
        assert y == float(score[name[a]] > score[name[b]])                 # higher score preferred


def _ultra(i, ratings):
    completions = [{"model": f"m{k}", "response": f"resp {i}.{k}", "critique": "", "overall_score": 5.0,
                    "annotations": {a: {"Rating": r, "Rationale": ""} for a, r in zip(
                        ("helpfulness", "honesty", "instruction_following", "truthfulness"), rs)}}
                   for k, rs in enumerate(ratings)]
    return {"source": "s", "instruction": f"instruction {i}", "models": [], "completions": completions}


def test_ultrafeedback_p_users_follow_their_attribute():
    rng = np.random.default_rng(0)
    records = [_ultra(i, [[str(v) for v in rng.integers(1, 6, size=4)] + [] for _ in range(4)])
               for i in range(40)]
    records[0]["completions"][0]["annotations"]["honesty"]["Rating"] = "N/A"
    ratings = ultrafeedback_ratings(records)
    assert ratings.num_rows == 160 and np.isnan(ratings.column("honesty")[0].as_py())
    table = ultrafeedback_p(records, ("helpfulness", "honesty"), comparisons_per_user=5, seed=1)
    score = {(row["item"]): row for row in ratings.to_pylist()}
    attrs = ("helpfulness", "honesty")
    for row in table.to_pylist():
        ra, rb = score[row["a"]], score[row["b"]]
        mine = attrs[row["user_type"]]
        assert row["label"] == float(ra[mine] > rb[mine])             # the user's attribute decides
        other = attrs[1 - row["user_type"]]
        assert (ra[other] > rb[other]) != (ra[mine] > rb[mine])       # controversial: the other type disagrees
    users = np.asarray(table.column("user"))
    types = np.asarray(table.column("user_type"))
    assert all(len(set(types[users == u])) == 1 for u in set(users))   # one type per user
    assert np.all(np.bincount(users) == 5)
    ds = import_comparisons(table, prompt="prompt")
    validate_dataset(ds)


def test_helpsteer2_attributes_and_direction_users():
    rng = np.random.default_rng(0)
    records = [{"prompt": f"prompt {i // 2}", "response": f"response {i}",
                **{a: int(v) for a, v in zip(("helpfulness", "correctness", "coherence", "complexity", "verbosity"),
                                             rng.integers(0, 5, size=5))}} for i in range(40)]
    ds = helpsteer2_dataset(records, n_users=6, comparisons_per_user=10, seed=0)
    validate_dataset(ds)
    assert ds.attributes.shape == (40, 5) and ds.meta["attribute_names"][0] == "helpfulness"
    v = np.asarray(ds.meta["truth"]["user_directions"])
    c = ds.comparisons
    margin = np.einsum("nm,nm->n", v[c.user], ds.attributes[c.a] - ds.attributes[c.b])
    np.testing.assert_array_equal(c.label, (margin > 0).astype(np.float32))
    assert np.all(c.a // 2 == c.b // 2)                                # same prompt
    np.testing.assert_array_equal(c.prompt, c.a // 2)


def test_pickapic_image_ids_into_a_feature_matrix():
    records = [{"caption": "a cat", "user_id": 5, "image_0_uid": "x1", "image_1_uid": "x2", "label_0": 1.0,
                "label_1": 0.0, "jpg_0": b"", "jpg_1": b"", "has_label": True},
               {"caption": "a dog", "user_id": 9, "image_0_uid": "x3", "image_1_uid": "x1", "label_0": 0.5,
                "label_1": 0.5, "jpg_0": b"", "jpg_1": b"", "has_label": True}]
    table = pickapic_comparisons(records)
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    ds = import_comparisons(table, items=feats, item_ids=["x1", "x2", "x3"])
    validate_dataset(ds)
    np.testing.assert_array_equal(ds.comparisons.a, [0, 2])
    np.testing.assert_array_equal(ds.comparisons.label, [1.0, 0.5])
    with pytest.raises(DatasetError, match="unknown item id 'x3'"):
        import_comparisons(table, items=feats[:2], item_ids=["x1", "x2"])
    with pytest.raises(DatasetError, match="missing field"):
        pickapic_comparisons(pa.table({"caption": ["c"]}))
