"""TRL's conversational preference format (issue 23 item 5): `prompt`, `chosen` and `rejected` as
lists of {role, content} messages, with a user id column, imports through the importer and
`pluralign embed` (each conversation embedded as its messages' contents, as the TRL adapter
scores them) into a dataset a run trains on; a malformed message names its file and row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pluralign.data.embed_table import EmbedConfig, embed_table
from pluralign.data.format import DatasetError
from pluralign.data.importers import conversation_text, import_comparisons
from pluralign.integrations._common import as_text
from tests.export.helpers import HashEncoder

ANSWERS = ["Use sorted().", "You cannot.", "Call list.sort() in place.", "Sorting is hard.", "Try heapq."]


def messages(role, text):
    return [{"role": role, "content": text}]


def write_trl_jsonl(path, n_users=8, per_user=10, seed=0):
    """Users who prefer the earlier answer in ANSWERS (half of them) or the later one."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for u in range(n_users):
            for _ in range(per_user):
                i, j = rng.choice(len(ANSWERS), 2, replace=False)
                chosen, rejected = (min(i, j), max(i, j)) if u % 2 else (max(i, j), min(i, j))
                prompt = f"How do I sort list {int(rng.integers(3))}?"
                f.write(json.dumps({"user_id": f"user-{u}", "prompt": messages("user", prompt),
                                    "chosen": messages("assistant", ANSWERS[chosen]),
                                    "rejected": messages("assistant", ANSWERS[rejected])}) + "\n")
    return path


def test_conversation_text_is_the_adapters_text():
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort?"},
                    {"role": "assistant", "content": [{"type": "text", "text": "Use "}, {"type": "image"},
                                                      {"type": "text", "text": "sorted()."}]}]
    assert conversation_text(conversation) == as_text(conversation) == "Be brief.\n\nSort?\n\nUse sorted()."
    assert conversation_text(messages("user", "Hi")) == "Hi"
    assert conversation_text(conversation, " | ") == as_text(conversation, " | ") == "Be brief. | Sort? | Use sorted()."
    # A bare str is its own message or part; a part with no text adds nothing.
    assert as_text(["Hi", {"content": ["a", {"type": "text", "text": None}, {"type": "text", "text": "b"}]}]) == "Hi\n\nab"
    with pytest.raises(ValueError, match="has no text content"):
        as_text([{"role": "user", "text": "no content field"}])


def test_trl_conversational_jsonl_imports(tmp_path):
    path = write_trl_jsonl(tmp_path / "prefs.jsonl", n_users=2, per_user=3)
    ds = import_comparisons(path, user="user_id", a="chosen", b="rejected", label=None, prompt="prompt",
                            encoder=HashEncoder())
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    enc = HashEncoder()
    c = ds.comparisons
    assert ds.meta["user_ids"] == ["user-0", "user-1"] and np.all(c.label == 1.0)
    np.testing.assert_array_equal(ds.items[c.a], enc.encode([r["chosen"][0]["content"] for r in rows]))
    np.testing.assert_array_equal(ds.prompts[c.prompt], enc.encode([r["prompt"][0]["content"] for r in rows]))
    bad = tmp_path / "bad.jsonl"
    rows[2]["rejected"] = [{"role": "assistant", "text": "no content field"}]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DatasetError, match=r"bad.jsonl row 2: column 'rejected': message .* has no text content"):
        import_comparisons(bad, user="user_id", a="chosen", b="rejected", label=None, prompt="prompt", encoder=HashEncoder())


@pytest.mark.slow
def test_trl_conversational_jsonl_embeds_trains_and_scores_texts(tmp_path):
    """`pluralign embed` -> a dataset directory -> a tiny run -> the run's reward scores the same
    conversations' texts as their embeddings."""
    import pluralign
    from pluralign.data.sources import DiskDataConfig
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.pal import PALConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    path = write_trl_jsonl(tmp_path / "prefs.jsonl", n_users=20, per_user=12)
    with open(path, "a") as f:  # TRL data has them: a pair whose two answers are the same text
        f.write(json.dumps({"user_id": "user-0", "prompt": messages("user", "Sort?"),
                            "chosen": messages("assistant", "Same."), "rejected": messages("assistant", "Same.")}) + "\n")
    dataset = embed_table(EmbedConfig(input=str(path), output=str(tmp_path / "dataset"), user="user_id", a="chosen",
                                      b="rejected", label=None, prompt="prompt", identical="drop", progress=False),
                          encoder=HashEncoder())
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["embed"]["dropped_identical"] == 1 and meta["n_users"] == 20
    config = RunConfig(
        model=PALConfig(name="pal_a", n_prototypes=2, latent_dim=4),
        data=DiskDataConfig(path=str(dataset)),
        train=TrainConfig(progress=False, max_epochs=2, batch_size=64, checkpoint=False),
        eval=EvalConfig(shots=[1], modes=["random"], draws=1, prior_strengths=[1.0], inference_steps=3),
        seeds=[0], cache_dir=str(tmp_path / "cache"),
    )
    results = run(config, tmp_path / "run")
    assert np.isfinite(results["seen"]["per_seed"][0]["log_loss"])
    reward = pluralign.load(tmp_path / "run").reward(capacity=4, encoder=HashEncoder())
    user = reward.trained.users["user_id"][int(reward.trained.seen_users[0])]
    enc = HashEncoder()
    np.testing.assert_allclose(reward("How do I sort list 0?", ANSWERS, user),
                               reward(enc.encode(["How do I sort list 0?"])[0], enc.encode(ANSWERS), user), rtol=1e-6, atol=1e-6)
