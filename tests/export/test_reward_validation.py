"""The reward checks what it is given (issue 23 item 6): every bad input a caller can send is a
one-line `InputError` (a ValueError; `InputTypeError` also a TypeError, `UnknownUserError` also a
KeyError) naming the argument and the problem, never NaN rewards, a silent reshape or another
user's state; a broken artifact is an `ArtifactError` naming its file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import pluralign
from pluralign.errors import ArtifactError, InputError, InputTypeError, UnknownUserError
from pluralign.export import OnlineUser, Support, UserState


@pytest.fixture(scope="module")
def items(pal_a_artifact):
    return np.asarray(pal_a_artifact[1].items, np.float32)  # [30, 8]


def seen_user(reward):
    return reward.trained.users["user_id"][int(reward.trained.seen_users[0])]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("field", ["e_a", "e_b", "e_x"])
def test_support_with_a_nan_feature(pal_a_reward, items, field):
    support = Support(e_a=items[:4].copy(), e_b=items[4:8].copy(), e_x=items[8:12].copy())
    getattr(support, field)[1, 3] = np.nan
    with pytest.raises(InputError, match=rf"Support\.{field}: nan at index \[1, 3\] is not finite") as e:
        pal_a_reward.infer(support)
    one_line(e)


def test_support_with_a_nan_label_or_bad_labels_and_weights(pal_a_reward, items):
    pair = dict(e_a=items[:4], e_b=items[4:8])
    with pytest.raises(InputError, match=r"Support\.label: nan at index \[2\] is not finite"):
        pal_a_reward.infer(Support(**pair, label=[1.0, 0.0, np.nan, 1.0]))
    for bad in (2.0, -1.0):
        with pytest.raises(InputError, match=rf"Support\.label: {bad} at index 0 is outside \[0, 1\]"):
            pal_a_reward.infer(Support(**pair, label=[bad, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError, match=r"Support\.weight: -1.0 at index 3 is negative"):
        pal_a_reward.infer(Support(**pair, weight=[1.0, 1.0, 1.0, -1.0]))
    with pytest.raises(InputError, match=r"Support\.weight: inf at index \[0\] is not finite"):
        pal_a_reward.infer(Support(**pair, weight=[np.inf, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError, match=r"Support\.label: shape \(3,\) for 4 comparisons"):
        pal_a_reward.infer(Support(**pair, label=[1.0, 1.0, 1.0]))


@pytest.mark.parametrize("width", [4, 16])
def test_support_of_the_wrong_size_is_not_reshaped(pal_a_reward, width):
    """[4, 4] or [4, 16] for a D = 8 model used to become 2 or 8 comparisons of D = 8."""
    e = np.ones((4, width), np.float32)
    with pytest.raises(InputError, match=rf"Support\.e_a: shape \(4, {width}\); expected \[D\] or \[n, D\] embeddings "
                                         r"with D = 8") as error:
        pal_a_reward.infer(Support(e_a=e, e_b=e))
    one_line(error)
    with pytest.raises(InputError, match=r"Support\.e_b: 3 rows but Support\.e_a has 4"):
        pal_a_reward.infer(Support(e_a=np.ones((4, 8)), e_b=np.ones((3, 8))))
    with pytest.raises(InputError, match=r"Support\.e_x: 2 prompts for 4 comparisons"):
        pal_a_reward.infer(Support(e_a=np.ones((4, 8)), e_b=np.zeros((4, 8)), e_x=np.ones((2, 8))))
    with pytest.raises(InputError, match="exceed capacity 8"):
        pal_a_reward.infer(Support(e_a=np.ones((9, 8)), e_b=np.zeros((9, 8))))


def test_best_of_n_over_a_nan_candidate(pal_a_reward, items):
    candidates = items[:5].copy()
    candidates[2, 0] = np.nan
    with pytest.raises(InputError, match=r"candidates: nan at index \[2, 0\] is not finite"):
        pal_a_reward.best_of_n(None, candidates, seen_user(pal_a_reward))
    with pytest.raises(InputError, match=r"responses: nan"):
        pal_a_reward(None, candidates, seen_user(pal_a_reward))
    with pytest.raises(InputError, match=r"prompt: inf"):
        pal_a_reward(np.full(8, np.inf), items[:5], seen_user(pal_a_reward))


def test_online_user_add_checks_label_and_features(pal_a_reward, items):
    online = OnlineUser(pal_a_reward, n_samples=4)
    with pytest.raises(InputError, match=r"label: 3.0 at index 0 is outside \[0, 1\]"):
        online.add(items[0], items[1], label=3.0)
    bad = items[0].copy()
    bad[5] = np.nan
    with pytest.raises(InputError, match=r"e_a: nan at index \[5\] is not finite"):
        online.add(bad, items[1])
    with pytest.raises(InputError, match=r"e_b: shape \(4,\)"):
        online.add(items[0], items[1, :4])
    with pytest.raises(InputError, match="takes one comparison"):
        online.add(items[:2], items[2:4])
    assert online.k == 0  # nothing bad was recorded
    online.add(items[0], items[1], label=0.25)
    assert online.k == 1 and np.all(np.isfinite(online.state))


def test_an_int_that_is_not_a_user_id_is_not_a_row(pal_a_reward, items):
    """User ids here are 100..111: user 3 is no one, not row 3 (another user)."""
    with pytest.raises(UnknownUserError, match=r"user 3: not a user id of dataset .* ids look like '100', '101'") as e:
        pal_a_reward(None, items[:3], 3)
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    one_line(e)
    row = int(pal_a_reward.trained.seen_users[0])
    by_id = pal_a_reward(None, items[:3], 100 + row)
    np.testing.assert_array_equal(by_id, pal_a_reward(None, items[:3], str(100 + row)))
    with pytest.raises(InputTypeError, match="user: expected a user id"):
        pal_a_reward(None, items[:3], {"id": 100})
    with pytest.raises(InputError, match=r"UserState\.vector: nan"):
        pal_a_reward(None, items[:3], UserState(np.full(pal_a_reward.state_dim, np.nan)))


def test_wrong_types_name_the_argument(pal_a_reward, items):
    with pytest.raises(InputTypeError, match="support: expected a pluralign.export.Support"):
        pal_a_reward.infer({"e_a": items[:2], "e_b": items[2:4]})
    with pytest.raises(InputTypeError, match=r"Support\.label: expected numbers, got texts"):
        pal_a_reward.infer(Support(e_a=items[:2], e_b=items[2:4], label=["yes", "no"]))
    with pytest.raises(InputError, match=r"responses: texts are ragged"):
        pal_a_reward(None, ["a", ["b", "c"]], seen_user(pal_a_reward))
    with pytest.raises(InputTypeError, match=r"responses: expected numbers \(embeddings\) or texts"):
        pal_a_reward(None, [[1.0] * 8, [1.0] * 7], seen_user(pal_a_reward))


def test_a_truncated_model_json_or_corrupt_checkpoint_names_the_file(pal_a_artifact, tmp_path):
    source = pal_a_artifact[0]
    truncated = shutil.copytree(source, tmp_path / "truncated")
    text = (truncated / "model.json").read_text()
    (truncated / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match=r"truncated/model.json: not valid JSON") as e:
        pluralign.load(truncated)
    one_line(e)
    corrupt = shutil.copytree(source, tmp_path / "corrupt")
    for chunk in (corrupt / "state" / "d").iterdir():  # the merged OCDBT data files
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=r"corrupt/state: cannot be read") as e:
        pluralign.load(corrupt)
    one_line(e)
    assert isinstance(e.value, RuntimeError)  # as a state mismatch always was
    (corrupt / "dataset_meta.json").write_text("[1, 2]")
    shutil.rmtree(corrupt / "state")
    shutil.copytree(source / "state", corrupt / "state")
    with pytest.raises(ArtifactError, match=r"corrupt/dataset_meta.json: expected a JSON object"):
        pluralign.load(corrupt)
