"""The RLHF adapters (pluralign.integrations): on a tiny text artifact (random θ, the offline
WordLlama encoder recorded in its dataset meta), each framework's call gives exactly
`trained.reward()`'s rewards for the same texts and users; the TRL callable pickles without its
model; unknown users follow the chosen policy and are counted. The frameworks are not installed:
their calls are reproduced with the argument shapes they document."""

from __future__ import annotations

import functools
import pathlib
import pickle

import numpy as np
import pytest

import pluralign
from pluralign.export import Support, UserState
from pluralign.integrations import openrlhf, verl
from pluralign.integrations.trl import reward_function
from tests.text_run import text_run

PROMPTS = ["How do I cook rice?", "Write a haiku about the sea.", "Explain gravity to a child."]
RESPONSES = ["Rinse it, then simmer for twenty minutes.", "Waves fold into foam / salt wind carries gull voices",
             "Things fall down because the earth pulls them.", "I cannot help with that.",
             "Boil water, add rice, wait.", "Gravity is the curvature of spacetime."]


@functools.cache
def artifact(root: str) -> pathlib.Path:
    """A PAL-A artifact over 64-d WordLlama text embeddings, users with string ids (`tests.text_run`)."""
    return text_run(pathlib.Path(root) / "text_run")[0]


@pytest.fixture
def run(tmp_path_factory):
    run_dir = artifact(str(tmp_path_factory.getbasetemp() / "integration_artifacts"))
    trained = pluralign.load(run_dir)
    seen = [uid for uid, split in zip(trained.users["user_id"], trained.users["split"]) if split == "seen"]
    held_out = next(uid for uid, split in zip(trained.users["user_id"], trained.users["split"]) if split == "unseen_test")
    return {"run_dir": run_dir, "trained": trained, "reward": reward_of(run_dir), "seen": seen, "held_out": held_out}


@functools.cache
def reward_of(run_dir: pathlib.Path):
    return pluralign.load(run_dir).reward()


def expected(reward, prompt, response, user) -> float:
    """The library's own reward of one response for one user (texts embedded by `reward`)."""
    return float(reward(prompt, [response], user)[0])


def population(reward) -> Support:
    empty = np.zeros((0, reward.dim), np.float32)
    return Support(e_a=empty, e_b=empty)


def samples(run):
    """Six (prompt, response, user id) samples: two seen users, a registered one and unknowns."""
    a, b = run["seen"][:2]
    prompts = [PROMPTS[i % 3] for i in range(6)]
    users = [a, b, a, "new-user", "stranger", run["held_out"]]
    return prompts, list(RESPONSES), users


def test_trl_reward_is_the_library_reward_for_each_row_user(run):
    reward, (a, b) = run["reward"], run["seen"][:2]
    prompts, responses, users = samples(run)
    fn = reward_function(run["run_dir"])
    assert fn.__name__ == "pluralign_text_run"
    support = Support(e_a=["Short and plain.", "Just the facts."], e_b=["A long flowery answer.", "Poetry, please!"])
    fn.add_user("new-user", support)
    got = fn(prompts=prompts, completions=responses, completion_ids=[[1, 2]] * 6, user_id=users, trainer_state=None)
    embedded = Support(e_a=reward.embed_texts(support.e_a), e_b=reward.embed_texts(support.e_b))
    want = [expected(reward, p, r, u) for p, r, u in zip(prompts, responses, [a, b, a, embedded, population(reward), population(reward)])]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert all(isinstance(x, float) for x in got)
    assert abs(got[0] - expected(reward, prompts[0], responses[0], b)) > 1e-4  # the user matters
    # Conversational format: messages' contents joined by a blank line, roles dropped.
    conv_prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in prompts]
    conv = [[{"role": "assistant", "content": r}] for r in responses]
    got_conv = fn(prompts=conv_prompts, completions=conv, completion_ids=None, user_id=users, trainer_state=None)
    want_conv = [expected(reward, f"Be brief.\n\n{p}", r, u)
                 for p, r, u in zip(prompts, responses, [a, b, a, embedded, population(reward), population(reward)])]
    np.testing.assert_allclose(got_conv, want_conv, rtol=1e-6, atol=1e-6)
    # An exported state vector; a TrainedModel instead of a path (its loaded model reused).
    state = np.asarray(reward.user_state(b))
    fn2 = reward_function(run["trained"], name="mine")
    fn2.add_user("vector-user", state=state)
    assert fn2.__name__ == "mine"
    np.testing.assert_allclose(fn2(prompts=prompts[:1], completions=responses[:1], user_id=["vector-user"]),
                               [expected(reward, prompts[0], responses[0], UserState(state))], rtol=1e-6, atol=1e-6)


def test_trl_reward_function_pickles_without_its_model(run):
    prompts, responses, users = samples(run)
    fn = reward_function(run["run_dir"], unknown_user="none")
    fn.add_user("new-user", state=np.asarray(run["reward"].user_state(run["seen"][1])))
    before = fn(prompts=prompts, completions=responses, user_id=users)
    blob = pickle.dumps(fn)
    assert len(blob) < 4096 and b"jax" not in blob  # path, options and registered users only
    copy = pickle.loads(blob)
    assert copy.__name__ == fn.__name__ and copy.users.inferred == {}
    assert copy(prompts=prompts, completions=responses, user_id=users) == before
    assert before[4] is None and before[5] is None and None not in before[:4]


def test_trl_unknown_user_policies_and_their_count(run):
    reward = run["reward"]
    prompts, responses, users = samples(run)
    logged = []
    fn = reward_function(run["run_dir"])
    got = fn(prompts=prompts, completions=responses, user_id=users, log_metric=lambda k, v: logged.append((k, v)),
             log_extra=None, trainer_state=None)
    assert logged == [("pluralign/unknown_users", 3.0)]  # new-user (unregistered), stranger, the held-out user
    np.testing.assert_allclose(got[3:], [expected(reward, p, r, population(reward)) for p, r in zip(prompts[3:], responses[3:])],
                               rtol=1e-6, atol=1e-6)
    fn(prompts=prompts, completions=responses, user_id=users, log_metric=None)  # TRL passes None without a logger
    assert fn.unknown_count == 6
    none = reward_function(run["run_dir"], unknown_user="none")(prompts=prompts, completions=responses, user_id=users)
    assert none[3:] == [None] * 3 and none[:3] == pytest.approx(got[:3], abs=1e-6)
    with pytest.raises(KeyError, match="stranger"):
        reward_function(run["run_dir"], unknown_user="error")(prompts=prompts, completions=responses, user_id=users)
    with pytest.raises(KeyError, match="no column 'user_id'"):
        fn(prompts=prompts, completions=responses, persona=users)
    assert fn(prompts=[], completions=[], user_id=[]) == []
    everyone = reward_function(run["run_dir"], user_column=None)(prompts=prompts[:2], completions=responses[:2])
    np.testing.assert_allclose(everyone, [expected(reward, p, r, population(reward)) for p, r in zip(prompts[:2], responses[:2])],
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown_user"):
        reward_function(run["run_dir"], unknown_user="skip")


def test_openrlhf_reward_func(run, monkeypatch):
    reward, (a, b) = run["reward"], run["seen"][:2]
    monkeypatch.setenv("PLURALIGN_RUN", str(run["run_dir"]))
    openrlhf.configure()  # the run from the environment
    templated = [f"<|user|>\n{p}\n<|assistant|>\n" for p in PROMPTS]
    queries = [templated[0] + RESPONSES[0], templated[1] + RESPONSES[1], templated[2] + RESPONSES[2], "garbled" + RESPONSES[3]]
    labels = [a, {"user_id": b}, {"user_id": "stranger"}, {"user_id": a, "prompt": PROMPTS[0]}]
    out = openrlhf.reward_func(queries, templated + [templated[0]], labels)
    want = [expected(reward, templated[0], RESPONSES[0], a), expected(reward, templated[1], RESPONSES[1], b),
            expected(reward, templated[2], RESPONSES[2], population(reward)),
            expected(reward, PROMPTS[0], "garbled" + RESPONSES[3], a)]  # not prefixed: scored whole, with the label's raw prompt
    np.testing.assert_allclose(out["rewards"], want, rtol=1e-6, atol=1e-6)
    assert out["scores"] == out["rewards"] and all(isinstance(r, float) for r in out["rewards"])
    assert out["extra_logs"] == {"pluralign/unknown_user": [0.0, 0.0, 1.0, 0.0], "pluralign/prompt_not_prefix": [0.0, 0.0, 0.0, 1.0]}
    assert openrlhf.reward_func([], [], []) == {"rewards": [], "scores": [], "extra_logs": {
        "pluralign/unknown_user": [], "pluralign/prompt_not_prefix": []}}
    openrlhf.configure(run["run_dir"], unknown_user="error")
    with pytest.raises(KeyError, match="stranger"):
        openrlhf.reward_func(queries, templated + [templated[0]], labels)
    monkeypatch.delenv("PLURALIGN_RUN")
    openrlhf.configure()
    with pytest.raises(ValueError, match="PLURALIGN_RUN"):
        openrlhf.reward_func(queries[:1], templated[:1], labels[:1])


def test_verl_compute_score(run, monkeypatch):
    reward, a = run["reward"], run["seen"][0]
    monkeypatch.setenv("PLURALIGN_RUN", str(run["run_dir"]))
    score = verl.compute_score("tldr", RESPONSES[0], None, extra_info={"prompt": PROMPTS[0], "user_id": a})
    assert isinstance(score, float)
    np.testing.assert_allclose(score, expected(reward, PROMPTS[0], RESPONSES[0], a), rtol=1e-6, atol=1e-6)
    monkeypatch.delenv("PLURALIGN_RUN")
    unknown = verl.compute_score("tldr", RESPONSES[1], None, extra_info={"prompt": [{"role": "user", "content": PROMPTS[1]}]},
                                 run_dir=str(run["run_dir"]), return_dict=True)
    assert unknown["unknown_user"] == 1.0
    np.testing.assert_allclose(unknown["score"], expected(reward, PROMPTS[1], RESPONSES[1], population(reward)), rtol=1e-6, atol=1e-6)
    batch = verl.compute_score_batch(["tldr"] * 2, RESPONSES[:2], [None, None],
                                     [{"prompt": PROMPTS[0], "user_id": a}, None], run_dir=str(run["run_dir"]))
    np.testing.assert_allclose(batch, [score, expected(reward, "", RESPONSES[1], population(reward))], rtol=1e-6, atol=1e-6)
    state = np.asarray(reward.user_state(run["seen"][1]))
    verl.add_user("vector-user", state=state)  # registered in this process
    np.testing.assert_allclose(
        verl.compute_score("tldr", RESPONSES[2], None, extra_info={"prompt": PROMPTS[2], "user_id": "vector-user"},
                           run_dir=str(run["run_dir"])),
        expected(reward, PROMPTS[2], RESPONSES[2], UserState(state)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="PLURALIGN_RUN"):
        verl.compute_score("tldr", RESPONSES[0], None, extra_info={"user_id": a})
    with pytest.raises(ValueError, match="unknown_user"):
        verl.compute_score("tldr", RESPONSES[0], None, extra_info={"user_id": a}, run_dir=str(run["run_dir"]), unknown_user="none")
