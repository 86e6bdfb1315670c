"""The HTTP reward function against a fake local reward server (standard library, 127.0.0.1, a free
port): the OpenRLHF JSON it sends, the rewards it returns, pickling, and one-line errors."""

from __future__ import annotations

import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pluralign.integrations.http import HTTPRewardFunction


class FakeServer:
    """Answers POST /get_reward with reward len(response) (+100 for the user "vip", null for "nobody"),
    keeping every request's path, headers and body; `reply` overrides the answer."""

    def __init__(self):
        self.requests, self.reply = [], None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, answer = outer.reply or (200, outer.rewards(body))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def rewards(body):
        out = []
        for query, prompt, user in zip(body["query"], body["prompts"], body["labels"]):
            out.append(None if user == "nobody" else len(query) - len(prompt) + (100.0 if user == "vip" else 0.0))
        return {"rewards": out, "scores": out, "extra_logs": {}}


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_sends_openrlhf_json_and_returns_the_rewards(server):
    fn = HTTPRewardFunction(server.url + "/", token="s3cret")
    got = fn(prompts=["Hi. ", "Q? "], completions=["hello", "an answer"], completion_ids=[[1], [2]],
             user_id=[np.int64(7), "vip"], trainer_state=None, log_metric=None, log_extra=None)
    assert got == [5.0, 109.0] and all(isinstance(r, float) for r in got)
    (request,) = server.requests
    assert request["path"] == "/get_reward"
    assert request["body"] == {"query": ["Hi. hello", "Q? an answer"], "prompts": ["Hi. ", "Q? "], "labels": [7, "vip"]}
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    # Conversations are flattened as the in-process TRL reward does; a null reward stays None.
    conv = fn(prompts=[[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]],
              completions=[[{"role": "assistant", "content": "Hello"}]], user_id=["nobody"])
    assert conv == [None]
    assert server.requests[-1]["body"]["query"] == ["Be brief.\n\nHiHello"]
    assert HTTPRewardFunction(server.url, user_column=None)(prompts=["p"], completions=["abc"]) == [3.0]
    assert server.requests[-1]["body"]["labels"] == [None]
    assert fn(prompts=[], completions=[], user_id=[]) == [] and len(server.requests) == 3  # nothing sent


def test_pickles_light_with_its_name(server):
    fn = HTTPRewardFunction(server.url, name="remote_pal")
    blob = pickle.dumps(fn)
    copy = pickle.loads(blob)
    assert len(blob) < 1024 and copy.__name__ == "remote_pal" and copy.url == f"{server.url}/get_reward"
    assert copy(prompts=["a"], completions=["xyz"], user_id=["u"]) == [3.0]


def test_errors_are_one_line_and_name_the_server(server):
    fn = HTTPRewardFunction(server.url)
    server.reply = (400, {"error": "labels[0]: not a user id"})
    with pytest.raises(RuntimeError, match=r"/get_reward answered 400: .*labels\[0\]: not a user id"):
        fn(prompts=["a"], completions=["b"], user_id=["u"])
    server.reply = (200, {"rewards": [1.0, 2.0]})
    with pytest.raises(RuntimeError, match=r"expected \{\"rewards\": \[1 numbers\]\}"):
        fn(prompts=["a"], completions=["b"], user_id=["u"])
    with pytest.raises(KeyError, match="no column 'user_id'"):
        fn(prompts=["a"], completions=["b"], persona=["u"])
    with pytest.raises(ValueError, match="2 completions, 1 user ids"):
        fn(prompts=["a", "b"], completions=["b", "c"], user_id=["u"])
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        HTTPRewardFunction("127.0.0.1:8000")
    port = server.server.server_address[1]
    server.server.shutdown()
    server.server.server_close()
    with pytest.raises(ConnectionError, match=f"cannot reach http://127.0.0.1:{port}/get_reward"):
        HTTPRewardFunction(f"http://127.0.0.1:{port}", timeout=5)(prompts=["a"], completions=["b"], user_id=["u"])
