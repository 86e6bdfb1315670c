"""`pluralign serve`: the exact OpenRLHF /get_reward JSON and the native API give the library's own
rewards and user states; malformed requests get a 4xx and the server keeps serving; answers survive
a SIGKILL; concurrent clients get no errors. The fast tests call the app in-process (TestClient);
the slow ones run `python -m pluralign.serve.cli` on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from pluralign.export import Support
from pluralign.serve.answers import AnswerLog
from pluralign.serve.app import ServeConfig, create_app
from pluralign.serve.service import RewardService

PROMPTS = ["How do I cook rice?", "Write a haiku about the sea.", "Explain gravity to a child."]
RESPONSES = ["Rinse it, then simmer for twenty minutes.", "Waves fold into foam / salt wind carries gull voices",
             "Things fall down because the earth pulls them.", "I cannot help with that."]
ANSWERS = [{"chosen": "Short and plain.", "rejected": "A long flowery answer.", "prompt": PROMPTS[0]},
           {"chosen": "Just the facts.", "rejected": "Poetry, please!", "prompt": PROMPTS[1], "label": 0.8},
           {"chosen": "Yes.", "rejected": "Well, it depends on many things.", "prompt": PROMPTS[2]}]
SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def client(text_run, tmp_path, unknown_user: str = "population", **config) -> TestClient:
    service = RewardService(text_run["run_dir"], unknown_user=unknown_user, answers_path=tmp_path / "answers.jsonl",
                            trained=text_run["trained"])
    return TestClient(create_app(service, ServeConfig(**config)))


def population(reward) -> Support:
    empty = np.zeros((0, reward.dim), np.float32)
    return Support(e_a=empty, e_b=empty)


def answered(reward, answers) -> Support:
    """The library's user of these answers (texts embedded by the run's encoder)."""
    embed = lambda key: reward.embed_texts([a[key] for a in answers])  # noqa: E731
    return Support(e_a=embed("chosen"), e_b=embed("rejected"), e_x=embed("prompt"), label=[a.get("label", 1.0) for a in answers])


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=1e-5, atol=1e-5)


def test_openrlhf_get_reward_json(text_run, tmp_path):
    reward, (a, b) = text_run["reward"], text_run["seen"][:2]
    templated = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in PROMPTS]
    queries = [templated[0] + RESPONSES[0] + "<|im_end|><|endoftext|><|endoftext|>", templated[1] + RESPONSES[1] + "<|im_end|>",
               templated[2] + RESPONSES[2], "garbled" + RESPONSES[3]]
    labels = [a, {"user_id": b}, text_run["held_out"], {"user_id": a, "prompt": PROMPTS[0]}]
    with client(text_run, tmp_path, special_tokens=SPECIAL) as c:
        r = c.post("/get_reward", json={"query": queries, "prompts": templated + [templated[0]], "labels": labels})
        assert r.status_code == 200, r.text
        out = r.json()
        assert c.post("/get_reward", json={"query": [], "prompts": [], "labels": []}).json() == {
            "rewards": [], "scores": [], "extra_logs": {"pluralign/unknown_user": [], "pluralign/prompt_not_prefix": []}}
    clean = [f"user\n{p}\nassistant\n" for p in PROMPTS]  # the templated prompt, special tokens removed
    want = [reward(clean[0], [RESPONSES[0]], a)[0], reward(clean[1], [RESPONSES[1]], b)[0],
            reward(clean[2], [RESPONSES[2]], population(reward))[0], reward(PROMPTS[0], ["garbled" + RESPONSES[3]], a)[0]]
    assert set(out) == {"rewards", "scores", "extra_logs"} and out["scores"] == out["rewards"]
    close(out["rewards"], want)
    assert out["extra_logs"] == {"pluralign/unknown_user": [0.0, 0.0, 1.0, 0.0], "pluralign/prompt_not_prefix": [0.0, 0.0, 0.0, 1.0]}


def test_native_score_answers_and_user_state(text_run, tmp_path):
    reward, a = text_run["reward"], text_run["seen"][0]
    with client(text_run, tmp_path, unknown_user="none") as c:
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["state_dim"] == reward.state_dim and health["dim"] == 64
        r = c.post("/score", json={"prompt": PROMPTS[0], "responses": RESPONSES, "user": a}).json()
        close(r["rewards"], reward(PROMPTS[0], RESPONSES, a))
        assert r["unknown_user"] is False
        vectors = {"prompt": reward.embed_texts([PROMPTS[0]])[0].tolist(), "responses": reward.embed_texts(RESPONSES).tolist(), "user": a}
        close(c.post("/score", json=vectors).json()["rewards"], r["rewards"])  # embeddings instead of texts
        assert c.post("/score", json={"prompt": None, "responses": RESPONSES[:2], "user": "nobody"}).json() == {
            "rewards": [None, None], "user": "nobody", "unknown_user": True}  # unknown_user="none"

        first = c.post("/users/alice/answers", json={"answers": ANSWERS[:2]})
        assert first.status_code == 200, first.text
        close(first.json()["state"], reward.user_state(answered(reward, ANSWERS[:2])))
        last = c.post("/users/alice/answers", json={"answers": ANSWERS[2:]}).json()  # the online update: all 3 answers
        assert last["kind"] == "answered" and last["answers"] == 3
        close(last["state"], reward.user_state(answered(reward, ANSWERS)))
        assert c.get("/users/alice").json() == last
        scored = c.post("/score", json={"prompt": PROMPTS[1], "responses": RESPONSES, "user": "alice"}).json()
        close(scored["rewards"], reward(PROMPTS[1], RESPONSES, answered(reward, ANSWERS)))
        seen = c.get(f"/users/{a}").json()
        assert seen["kind"] == "seen" and seen["answers"] == 0
        close(seen["state"], reward.user_state(a))
        assert c.get("/users/nobody").status_code == 404
    logged = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert logged == [{"user": "alice", "answers": ANSWERS[:2]}, {"user": "alice", "answers": ANSWERS[2:]}]


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(text_run, tmp_path):
    a = text_run["seen"][0]
    auth = {"Authorization": "Bearer s3cret"}
    ok = {"query": ["Q: hi A: hello"], "prompts": ["Q: hi A:"], "labels": [a]}
    bad = [  # (method, path, body or raw bytes, headers, expected status)
        ("post", "/get_reward", ok, {}, 401),
        ("post", "/get_reward", ok, {"Authorization": "Bearer wrong"}, 401),
        ("get", f"/users/{a}", None, {}, 401),
        ("post", "/get_reward", b"{not json", auth, 400),
        ("post", "/get_reward", [1, 2], auth, 400),
        ("post", "/get_reward", {"query": ["x"], "prompts": ["x"]}, auth, 400),
        ("post", "/get_reward", {"query": "x", "prompts": ["x"], "labels": [a]}, auth, 400),
        ("post", "/get_reward", {"query": [3], "prompts": ["x"], "labels": [a]}, auth, 400),
        ("post", "/get_reward", {"query": ["x", "y"], "prompts": ["x"], "labels": [a, a]}, auth, 400),
        ("post", "/get_reward", {"query": ["x"], "prompts": ["x"], "labels": ["stranger"]}, auth, 404),
        ("post", "/get_reward", {"query": ["x"], "prompts": ["x"], "labels": [[1.5]]}, auth, 400),
        ("post", "/get_reward", {"query": ["x" * 5000], "prompts": ["x"], "labels": [a]}, auth, 413),
        ("post", "/get_reward", {"query": ["x"] * 9, "prompts": ["x"] * 9, "labels": [a] * 9}, auth, 413),
        ("post", "/score", {"prompt": "p", "responses": ["a", [0.1, 0.2]], "user": a}, auth, 400),
        ("post", "/score", {"prompt": "p", "responses": [[0.1, 0.2, 0.3]], "user": a}, auth, 400),  # wrong D: the reward's ValueError
        ("post", "/score", b'{"prompt": "p", "responses": ["a"], "user": NaN}', auth, 400),
        ("post", "/score", {"prompt": 7, "responses": ["a"], "user": a}, auth, 400),
        ("post", "/score", {"prompt": "p", "responses": ["a"], "user": {"id": 1}}, auth, 400),
        ("post", "/users/bob/answers", {"answers": [{"chosen": "a", "rejected": "b", "label": 2}]}, auth, 400),
        ("post", "/users/bob/answers", {"answers": [{"chosen": "a", "rejected": "b", "weight": 1}]}, auth, 400),
        ("post", "/users/bob/answers", {"answers": [{"chosen": "a"}]}, auth, 400),
        ("post", "/users/bob/answers", {"answers": []}, auth, 400),
        ("post", "/users/bob/answers", {"answers": [{"chosen": "a", "rejected": "b", "prompt": "p"}, {"chosen": "a", "rejected": "b"}]}, auth, 400),
        ("post", f"/users/{a}/answers", {"answers": [{"chosen": "a", "rejected": "b"}]}, auth, 400),  # a seen user
        ("get", "/users/bob", None, auth, 404),
    ]
    assert len(bad) >= 20
    with client(text_run, tmp_path, unknown_user="error", token="s3cret", max_body_bytes=4096, max_request_samples=8) as c:
        for method, path, body, headers, status in bad:
            content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
            r = c.request(method.upper(), path, content=content, headers={"Content-Type": "application/json", **headers})
            assert r.status_code == status, (path, body, r.status_code, r.text)
            message = r.json()["error"]
            assert isinstance(message, str) and message and "\n" not in message
            good = c.post("/get_reward", json=ok, headers=auth)
            assert good.status_code == 200 and len(good.json()["rewards"]) == 1
        assert c.get("/health").status_code == 200  # no token needed
        assert c.get("/users/bob", headers=auth).status_code == 404  # no rejected answer was kept
    assert not (tmp_path / "answers.jsonl").read_text()


def test_answer_log_drops_a_torn_tail_and_is_locked(tmp_path):
    path = tmp_path / "answers.jsonl"
    log = AnswerLog(path)
    log.append({"user": "u", "answers": [{"chosen": "a", "rejected": "b"}]})
    with pytest.raises(ValueError, match="in use by another"):
        AnswerLog(path)
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"user": "u", "answ')  # a kill mid-write: never acknowledged
    log = AnswerLog(path)
    assert log.records == [{"user": "u", "answers": [{"chosen": "a", "rejected": "b"}]}]
    log.append({"user": "v", "answers": []})
    log.close()
    assert [json.loads(line)["user"] for line in path.read_text().splitlines()] == ["u", "v"]
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match="answers.jsonl:1: not a JSON record"):
        AnswerLog(path)


# ------------------------------------------------------------------ a real server process

@contextlib.contextmanager
def served(run_dir: pathlib.Path, *args: str):
    """`python -m pluralign.serve.cli RUN_DIR --port 0 ...` -> its base URL; killed at the end."""
    log = open(run_dir.parent / f"serve-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pluralign.serve.cli", str(run_dir), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        deadline, line = time.monotonic() + 180, ""
        while "listening on" not in line:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"server did not start (exit {proc.poll()}): {log.read()[-2000:]}")
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
        yield proc, line.split("listening on ")[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_sigkill_after_acknowledged_answers_keeps_them(text_run, tmp_path):
    answers_path = tmp_path / "answers.jsonl"
    with served(text_run["run_dir"], "--answers", str(answers_path)) as (proc, url):
        with httpx.Client(base_url=url, timeout=60) as http:
            for i, answer in enumerate(ANSWERS):
                assert http.post("/users/carol/answers", json={"answers": [answer]}).json()["answers"] == i + 1
            assert http.post("/users/dave/answers", json={"answers": ANSWERS[:1]}).status_code == 200
            before = {u: http.get(f"/users/{u}").json() for u in ("carol", "dave")}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with open(answers_path, "ab") as f:
        f.write(b'{"user": "carol", "answers": [{"cho')  # as if killed mid-write of an unacknowledged answer
    with served(text_run["run_dir"], "--answers", str(answers_path)) as (proc, url):
        with httpx.Client(base_url=url, timeout=60) as http:
            after = {u: http.get(f"/users/{u}").json() for u in ("carol", "dave")}
    assert after["carol"]["answers"] == 3 and after["dave"]["answers"] == 1
    for u in before:
        close(after[u]["state"], before[u]["state"])
    close(after["carol"]["state"], text_run["reward"].user_state(answered(text_run["reward"], ANSWERS)))


@pytest.mark.slow
def test_eight_concurrent_clients_get_no_errors(text_run, tmp_path):
    users = text_run["seen"][:4] + ["stranger"]
    errors, done = [], []

    def client_loop(url: str, worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(200):
                prompt = PROMPTS[i % 3]
                body = {"query": [prompt + RESPONSES[(i + worker) % 4]], "prompts": [prompt], "labels": [users[(i + worker) % 5]]}
                try:
                    r = http.post("/get_reward", json=body)
                    if r.status_code != 200 or len(r.json()["rewards"]) != 1:
                        errors.append(r.text)
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                done.append(1)

    with served(text_run["run_dir"], "--answers", str(tmp_path / "answers.jsonl")) as (proc, url):
        threads = [threading.Thread(target=client_loop, args=(url, w)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        health = httpx.get(f"{url}/health", timeout=30).json()
    assert errors == [] and len(done) == 1600
    assert health["samples"] == 1600 and health["batches"] < 1600  # concurrent requests shared model calls
