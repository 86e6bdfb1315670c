"""The reward server's HTTP face (FastAPI): OpenRLHF's `/get_reward` and a small native API.

    POST /get_reward          {"query": [B], "prompts": [B], "labels": [B]}  (OpenRLHF's remote reward model)
                              -> {"rewards": [B], "scores": [B], "extra_logs": {name: [B]}}
    POST /score               {"prompt": text | [D] | null, "responses": [N texts | N [D]], "user": id | null}
                              -> {"rewards": [N], "user": id, "unknown_user": bool}
    POST /users/{id}/answers  {"answers": [{"chosen", "rejected", "prompt"?, "label"?}, ...]}
                              -> the user's state after every answer so far (logged before the reply)
    GET  /users/{id}          {"user", "kind": "seen" | "answered", "answers": k, "state": [S]}
    GET  /health              the run, its sizes and the batches served (no token needed)

Everything but parsing runs on the model thread (`Batcher`); scoring requests of concurrent callers
share one model call. A bad request gets a 4xx and `{"error": one line}`: wrong JSON types or
lengths, NaN, a too large body (413) or an unknown user under `unknown_user="error"` (404); a
ValueError or TypeError from the reward itself is a 400 with its message. With a token, every
endpoint but /health needs `Authorization: Bearer <token>` (401 otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pluralign.integrations import openrlhf
from pluralign.integrations._common import to_floats
from pluralign.serve.batching import Batcher
from pluralign.serve.service import ANSWER_KEYS, RewardService, ScoreJob


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """HTTP-side options of `pluralign serve`."""

    token: str | None = None  # bearer token every endpoint but /health requires; None: open (loopback only!)
    max_batch: int = 1024  # samples scored in one model call, at most (about: one request is never split)
    max_request_samples: int = 4096  # samples in one request
    max_body_bytes: int = 16 << 20
    special_tokens: tuple[str, ...] = ()  # removed from OpenRLHF queries and prompts
    use_prompt: bool = True  # False: score responses alone (a run trained without prompts)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _reject_constant(name: str):
    raise RequestError(400, f"{name} is not a number JSON allows")


def _is_vector(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)


def _text_or_vector(x: Any, what: str) -> Any:
    if isinstance(x, str) or _is_vector(x):
        return x
    raise RequestError(400, f"{what} must be a string or a list of numbers, got {json.dumps(x)[:60]}")


def _items(body: dict, key: str, limit: int, kind: str = "text or vector") -> list:
    if key not in body:
        raise RequestError(400, f"missing field {key!r}")
    x = body[key]
    if not isinstance(x, list):
        raise RequestError(400, f"{key!r} must be a list, got {type(x).__name__}")
    if len(x) > limit:
        raise RequestError(413, f"{key!r} has {len(x)} entries; this server takes at most {limit} per request")
    if kind == "text":
        bad = next((i for i, v in enumerate(x) if not isinstance(v, str)), None)
        if bad is not None:
            raise RequestError(400, f"{key}[{bad}] must be a string, got {type(x[bad]).__name__}")
    elif kind == "text or vector":
        x = [_text_or_vector(v, f"{key}[{i}]") for i, v in enumerate(x)]
        if len({isinstance(v, str) for v in x}) > 1:
            raise RequestError(400, f"{key!r} mixes texts and vectors")
    return x


def _user_id(x: Any, what: str) -> Any:
    if x is None or isinstance(x, str) or isinstance(x, int) and not isinstance(x, bool):
        return x
    raise RequestError(400, f"{what} must be a user id (a string or an integer) or null, got {json.dumps(x)[:60]}")


def _label(x: Any, what: str) -> Any:
    if isinstance(x, dict):
        if "prompt" in x and not isinstance(x["prompt"], str):
            raise RequestError(400, f"{what}.prompt must be a string")
        _user_id(x.get("user_id"), f"{what}.user_id")
        return x
    return _user_id(x, what)


def _answer(x: Any, i: int) -> dict:
    if not isinstance(x, dict):
        raise RequestError(400, f"answers[{i}] must be an object with 'chosen' and 'rejected'")
    unknown = sorted(set(x) - set(ANSWER_KEYS))
    if unknown:
        raise RequestError(400, f"answers[{i}] has unknown fields {unknown}; expected {list(ANSWER_KEYS)}")
    for key in ("chosen", "rejected"):
        if key not in x:
            raise RequestError(400, f"answers[{i}] has no {key!r}")
        _text_or_vector(x[key], f"answers[{i}].{key}")
    if x.get("prompt") is not None:
        _text_or_vector(x["prompt"], f"answers[{i}].prompt")
    label = x.get("label", 1.0)
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.0 <= label <= 1.0:
        raise RequestError(400, f"answers[{i}].label must be a number in [0, 1] (P(chosen ≻ rejected)), got {label!r}")
    return x


def create_app(service: RewardService, config: ServeConfig = ServeConfig()) -> FastAPI:
    batcher = Batcher(service.score, config.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()
        service.log.close()

    app = FastAPI(title="pluralign reward server", lifespan=lifespan)
    app.state.batcher, app.state.service = batcher, service

    def authorize(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
            raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    async def body_of(request: Request) -> dict:
        authorize(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            raise RequestError(413, f"body of {int(length)} bytes; this server takes at most {config.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise RequestError(413, f"body over {config.max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise RequestError(400, f"body must be a JSON object, got {type(body).__name__}")
        return body

    def failure(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    app.add_exception_handler(RequestError, lambda request, e: failure(e.status, str(e)))
    # Raised by the reward (or the run's encoder) on the request's values: the caller's fault.
    app.add_exception_handler(ValueError, lambda request, e: failure(400, str(e).splitlines()[0] if str(e) else "bad value"))
    app.add_exception_handler(TypeError, lambda request, e: failure(400, str(e).splitlines()[0] if str(e) else "bad type"))
    app.add_exception_handler(KeyError, lambda request, e: failure(404, str(e.args[0]) if e.args else "unknown user"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **service.describe(), "batches": batcher.batches, "samples": batcher.samples}

    @app.post("/get_reward")
    async def get_reward(request: Request) -> dict:
        body = await body_of(request)
        limit = config.max_request_samples
        queries, prompts = _items(body, "query", limit, "text"), _items(body, "prompts", limit, "text")
        labels = [_label(x, f"labels[{i}]") for i, x in enumerate(_items(body, "labels", limit, "any"))]
        raw, responses, user_ids, prefixed = openrlhf.samples_of(queries, prompts, labels, config.special_tokens)
        if not responses:
            return openrlhf.answer([], [], [])
        job = ScoreJob(raw if config.use_prompt else None, responses, user_ids)
        rewards, unknown = await batcher.submit(job, len(responses))
        return openrlhf.answer(to_floats(rewards, unknown if service.unknown_user == "none" else None), unknown, prefixed)

    @app.post("/score")
    async def score(request: Request) -> dict:
        body = await body_of(request)
        responses = _items(body, "responses", config.max_request_samples)
        prompt = body.get("prompt")
        prompt = None if prompt is None else _text_or_vector(prompt, "prompt")
        user = _user_id(body.get("user"), "user")
        if not responses:
            return {"rewards": [], "user": user, "unknown_user": False}
        job = ScoreJob(None if prompt is None else [prompt] * len(responses), responses, [user] * len(responses))
        rewards, unknown = await batcher.submit(job, len(responses))
        return {"rewards": to_floats(rewards, unknown if service.unknown_user == "none" else None), "user": user,
                "unknown_user": bool(unknown[0])}

    @app.post("/users/{user_id}/answers")
    async def add_answers(user_id: str, request: Request) -> dict:
        body = await body_of(request)
        answers = [_answer(x, i) for i, x in enumerate(_items(body, "answers", config.max_request_samples, "any"))]
        return await batcher.run(service.add_answers, user_id, answers)

    @app.get("/users/{user_id}")
    async def user(user_id: str, request: Request) -> dict:
        authorize(request)
        return await batcher.run(service.user, user_id)

    return app
