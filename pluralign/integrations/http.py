"""A TRL reward function that asks a running reward server over HTTP: `pluralign serve RUN`, or any
server speaking OpenRLHF's remote reward JSON.

    from pluralign.integrations.http import HTTPRewardFunction
    reward = HTTPRewardFunction("http://127.0.0.1:8000")      # the dataset has a "user_id" column
    trainer = GRPOTrainer(..., reward_funcs=[reward], train_dataset=dataset)

Each TRL call is one `POST {url}/get_reward` with `{"query": [prompt + completion], "prompts":
[prompt], "labels": [user id]}` (conversations flattened as `pluralign.integrations.trl` does);
the reply's `"rewards"` are returned (null stays None: TRL's missing reward). The model lives in
the server, so the callable is light and picklable (URL, options; no connection), as async GRPO
needs. Only the standard library is used (`urllib`), with no proxy: a loopback server is reached
directly even where `http_proxy` is set.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

from pluralign.integrations._common import as_text

DEFAULT_URL = "http://127.0.0.1:8000"  # `pluralign serve`'s default: this machine only


def json_value(x: Any) -> Any:
    """A user id as JSON has it: numpy scalars as Python numbers, anything else not JSON as str."""
    if isinstance(x, np.generic):
        return x.item()
    return x if x is None or isinstance(x, (str, int, float, bool, dict)) else str(x)


class HTTPRewardFunction:
    """`f(prompts, completions, completion_ids=None, **columns) -> list[float | None]`: the rewards a
    reward server gives each completion for the user in `columns[user_column]` (None: every sample
    unlabelled, the server's population reward)."""

    def __init__(self, url: str = DEFAULT_URL, *, user_column: str | None = "user_id", name: str = "pluralign_http",
                 token: str | None = None, timeout: float = 60.0, endpoint: str = "/get_reward",
                 message_separator: str = "\n\n"):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url={url!r}: expected http://HOST:PORT (e.g. {DEFAULT_URL})")
        self.url = url.rstrip("/") + endpoint
        self.user_column = user_column
        self.__name__ = name  # TRL logs rewards/<__name__>/...
        self.token = token  # sent as "Authorization: Bearer <token>" (`pluralign serve --token`)
        self.timeout = timeout
        self.message_separator = message_separator

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, user_column={self.user_column!r})"

    def post(self, body: dict) -> dict:
        """One JSON POST to the server; its JSON reply, or a one-line error naming the URL."""
        request = urllib.request.Request(self.url, data=json.dumps(body, allow_nan=False).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        try:
            with opener.open(request, timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()
            raise RuntimeError(f"{self.__name__}: {self.url} answered {e.code}: {detail[:300]}") from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"{self.__name__}: cannot reach {self.url} ({e.reason}); is `pluralign serve` running?") from None
        except json.JSONDecodeError:
            raise RuntimeError(f"{self.__name__}: {self.url} did not answer JSON") from None

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                 completion_ids: Any = None, **kwargs: Any) -> list:
        completions = [as_text(c, self.message_separator) for c in completions]
        if self.user_column is None:
            users = [None] * len(completions)
        elif self.user_column in kwargs:
            users = [json_value(u) for u in kwargs[self.user_column]]
        else:
            raise KeyError(f"{self.__name__}: the dataset has no column {self.user_column!r}; "
                           "set user_column=... or user_column=None for the population reward")
        prompt_texts = [as_text(p, self.message_separator) for p in prompts] if prompts is not None else [""] * len(completions)
        if not len(prompt_texts) == len(completions) == len(users):
            raise ValueError(f"{len(completions)} completions, {len(users)} user ids, {len(prompt_texts)} prompts")
        if not completions:
            return []
        reply = self.post({"query": [p + c for p, c in zip(prompt_texts, completions)], "prompts": prompt_texts,
                           "labels": users})
        rewards = reply.get("rewards") if isinstance(reply, dict) else None
        if not isinstance(rewards, list) or len(rewards) != len(completions):
            raise RuntimeError(f"{self.__name__}: {self.url} answered {str(reply)[:200]}; expected "
                               f"{{\"rewards\": [{len(completions)} numbers]}}")
        out = [None if r is None else float(r) for r in rewards]
        if any(r is not None and not math.isfinite(r) for r in out):
            raise RuntimeError(f"{self.__name__}: {self.url} answered a reward that is not finite: {out}")
        return out
