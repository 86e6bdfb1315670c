"""New users' embeddings (export_user_embeddings and its CLI) are the evaluation protocol's few-shot
inference of their comparisons; `pluralign pairs` writes per-user DPO rows ranked by each user's
reward. On a tiny text run: random θ of PAL-A over 64-d WordLlama embeddings (what is tested is
that the export and the pairs use the model's own inference and rewards, not what they are)."""

from __future__ import annotations

import csv
import functools
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

import pluralign
from pluralign.evaluate import fewshot
from pluralign.export import Support
from pluralign.export.pairs import main as pairs_main
from pluralign.export.users import describe_user_states, export_user_embeddings, main as users_main, new_user_states
from pluralign.train.batches import make_tables, padded_batch
from tests.text_run import text_run as make_text_run

STEPS = 10  # few-shot inference steps recorded in the artifact
ANSWERS = [  # (user_id, prompt, chosen, rejected): two new users with opposite tastes
    ("007", "Describe the sea.", "Waves and salt.", "The ocean is a vast body of salt water covering most of the planet."),
    ("007", "Describe rain.", "Drops falling.", "Rain is liquid water falling from clouds in drops heavy enough to fall."),
    ("verbose", "Describe the sea.", "The ocean is a vast body of salt water covering most of the planet.", "Waves and salt."),
    ("verbose", "Describe rain.", "Rain is liquid water falling from clouds in drops heavy enough to fall.", "Drops falling."),
]
CANDIDATES = [
    {"prompt": "How do I cook rice?", "responses": ["Rinse, simmer twenty minutes.", "Boil water, add rice, wait.", "I cannot help."]},
    {"prompt": "Explain gravity.", "responses": ["Things fall.", "Mass curves spacetime.", "The earth pulls on you.", "No."]},
    {"prompt": "Write a haiku.", "responses": ["Waves fold into foam", "salt wind carries gull voices", "a haiku"]},
]


@functools.cache
def text_run(root: str):
    """(run directory, dataset, split) of a PAL-A artifact over WordLlama 64-d text embeddings."""
    return make_text_run(pathlib.Path(root) / "pairs_run", inference_steps=STEPS)


@pytest.fixture
def run(tmp_path_factory):
    run_dir, data, split = text_run(str(tmp_path_factory.getbasetemp() / "users_pairs_artifacts"))
    trained = pluralign.load(run_dir)
    return {"run_dir": run_dir, "data": data, "split": split, "trained": trained, "reward": reward_of(run_dir)}


@functools.cache
def reward_of(run_dir: pathlib.Path):
    return pluralign.load(run_dir).reward()


def write_answers(path: pathlib.Path) -> pathlib.Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "prompt", "chosen", "rejected"])
        writer.writerows(ANSWERS)
    return path


def test_new_user_embeddings_are_the_evaluation_inference(run, tmp_path):
    data, split, trained = run["data"], run["split"], run["trained"]
    users = split.unseen_test[:3]
    episodes = fewshot.make_episodes(data.comparisons, users, max_shots=4, mode="random", seed=1)
    adapt = fewshot.make_adapt_and_predict(trained.graphdef, STEPS, 0.1)
    pool, query = padded_batch(data.comparisons, episodes.pool), padded_batch(data.comparisons, episodes.query)
    k = 4
    states, _ = adapt(trained.params, make_tables(data), pool, jnp.int32(k), query, jnp.float32(3.0), jnp.asarray(split.seen))
    items = np.asarray(data.items, np.float32)
    supports = {}
    for u in range(len(users)):
        rows = episodes.pool[u, :k]
        c = data.comparisons.take(rows[rows >= 0])
        supports[f"new-{u}"] = Support(e_a=items[c.a], e_b=items[c.b], label=c.label)
    np.testing.assert_allclose(new_user_states(trained, supports), states, rtol=1e-5, atol=1e-5)

    shapes = export_user_embeddings(trained, tmp_path, new_users=supports)
    table = pq.read_table(tmp_path / "users.parquet").to_pydict()
    n_seen = len(split.seen)
    assert table["row"] == split.seen.tolist() + [-1] * 3 and table["kind"] == ["seen"] * n_seen + ["new"] * 3
    assert table["user_id"][n_seen:] == list(supports) and table["group"][n_seen:] == [-1] * 3
    spaces = describe_user_states(trained.model, states)
    for name, shape in shapes.items():
        array = np.load(tmp_path / f"{name}.npy")
        assert shape == array.shape and shape[0] == n_seen + 3
        np.testing.assert_allclose(array[n_seen:], spaces[name][0], rtol=1e-5, atol=1e-5)  # the evaluation's states
        seen = describe_user_states(trained.model, trained.seen_states[jnp.asarray(split.seen)])[name][0]
        np.testing.assert_allclose(array[:n_seen], seen, rtol=1e-6, atol=1e-6)  # seen users: their learned states
    assert "3 new user(s)" in (tmp_path / "README.md").read_text()
    with pytest.raises(ValueError, match="are ids of the run's dataset"):
        export_user_embeddings(trained, tmp_path / "clash", new_users={"user-0": supports["new-0"]})


def test_users_cli_exports_new_users_from_their_text_answers(run, tmp_path, capsys):
    answers = write_answers(tmp_path / "answers.csv")
    users_main([str(run["run_dir"]), str(tmp_path / "out"), "--new-users", str(answers), "--only-new"])
    table = pq.read_table(tmp_path / "out" / "users.parquet").to_pydict()
    assert table["user_id"] == ["007", "verbose"] and table["kind"] == ["new", "new"]  # "007" stays a text id
    reward = run["reward"]
    for i, user in enumerate(["007", "verbose"]):
        mine = [a for a in ANSWERS if a[0] == user]
        support = Support(e_x=[a[1] for a in mine], e_a=[a[2] for a in mine], e_b=[a[3] for a in mine])
        spaces = describe_user_states(run["trained"].model, reward.infer(support)[None])
        for name, (array, _) in spaces.items():
            np.testing.assert_allclose(np.load(tmp_path / "out" / f"{name}.npy")[i], array[0], rtol=1e-5, atol=1e-5)
    assert "out/" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,chosen\nu,a\n")
    with pytest.raises(SystemExit) as e:
        users_main([str(run["run_dir"]), str(tmp_path / "out2"), "--new-users", str(bad)])
    assert e.value.code == 1 and "no column 'rejected'" in capsys.readouterr().err


def test_pairs_rows_are_ranked_by_each_users_reward(run, tmp_path, monkeypatch, capsys):
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(row) + "\n" for row in CANDIDATES))
    answers = write_answers(tmp_path / "answers.csv")
    seen = [str(run["trained"].users["user_id"][r]) for r in run["trained"].seen_users[:2]]
    out = tmp_path / "pairs.jsonl"
    monkeypatch.setattr(sys, "argv", ["pluralign", "pairs", str(run["run_dir"]), "--candidates", str(candidates), "--out", str(out),
                                      "--users", ",".join(seen), "--new-users", str(answers), "--pairs", "all", "--with-rewards"])
    from pluralign.cli import main as cli_main

    cli_main()  # the `pluralign pairs` route
    assert f"{out}: " in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reward = run["reward"]
    states = {u: u for u in seen}
    for user in ("007", "verbose"):
        mine = [a for a in ANSWERS if a[0] == user]
        states[user] = Support(e_x=[a[1] for a in mine], e_a=[a[2] for a in mine], e_b=[a[3] for a in mine])
    expected_rows = 0
    for user, state in states.items():
        for cand in CANDIDATES:
            r = np.asarray(reward(cand["prompt"], cand["responses"], state))
            mine = [row for row in rows if row["user_id"] == user and row["prompt"] == cand["prompt"]]
            n = len(cand["responses"])
            assert len(mine) == n * (n - 1) // 2  # every pair: random θ leaves no two rewards tied
            expected_rows += len(mine)
            for row in mine:
                a, b = cand["responses"].index(row["chosen"]), cand["responses"].index(row["rejected"])
                assert r[a] > r[b]  # chosen is the one this user's reward ranks higher
                np.testing.assert_allclose([row["chosen_reward"], row["rejected_reward"]], [r[a], r[b]], rtol=1e-5, atol=1e-5)
    assert len(rows) == expected_rows

    # The default: one row per user and prompt, the user's best against their worst, four columns.
    best = tmp_path / "best.parquet"
    pairs_main([str(run["run_dir"]), "--candidates", str(candidates), "--out", str(best), "--users", seen[0]])
    table = pq.read_table(best).to_pylist()
    assert [sorted(row) for row in table] == [["chosen", "prompt", "rejected", "user_id"]] * 3
    for row, cand in zip(table, CANDIDATES):
        r = np.asarray(reward(cand["prompt"], cand["responses"], seen[0]))
        assert (row["chosen"], row["rejected"]) == (cand["responses"][r.argmax()], cand["responses"][r.argmin()])
    # A margin larger than every gap leaves nothing; a one-response prompt is refused in one line.
    pairs_main([str(run["run_dir"]), "--candidates", str(candidates), "--out", str(tmp_path / "none.jsonl"),
                "--users", seen[0], "--min-margin", "1e9"])
    assert (tmp_path / "none.jsonl").read_text() == ""
    candidates.write_text(json.dumps({"prompt": "p", "responses": ["only one"]}) + "\n")
    with pytest.raises(SystemExit):
        pairs_main([str(run["run_dir"]), "--candidates", str(candidates), "--out", str(tmp_path / "x.jsonl")])
    assert "candidates row 0: 1 response(s)" in capsys.readouterr().err
