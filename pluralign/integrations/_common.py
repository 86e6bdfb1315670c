"""What the RLHF adapters share: the per-process model cache, user resolution, message
flattening and one batched scoring call over (prompt, response, user) samples.

Every adapter is a thin format translation over `PersonalizedReward` (STYLE 16): texts are
embedded with the run's own encoder (`reward.embed_texts`) in one batch, and all samples are
scored for their own users in one jitted call (`reward(e_x [B, D], e_y [B, 1, D], B users)`).
Nothing here imports an RLHF framework.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from pluralign.data.importers import conversation_text, message_text

RUN_ENV = "PLURALIGN_RUN"  # the run directory, for adapters the framework builds by import path
UNKNOWN_POLICIES = ("population", "none", "error")

# (process id, model directory, seed, reward options) -> Scorer. The pid is part of the key so a
# forked worker builds its own model rather than reusing its parent's device buffers.
_SCORERS: dict[tuple, "Scorer"] = {}


def run_dir_from(run_dir: str | os.PathLike | None) -> pathlib.Path:
    """`run_dir`, else the `PLURALIGN_RUN` environment variable."""
    chosen = run_dir if run_dir is not None else os.environ.get(RUN_ENV)
    if not chosen:
        raise ValueError(f"no pluralign run given: pass run_dir=... or set the {RUN_ENV} environment variable")
    return pathlib.Path(chosen)


def check_policy(unknown_user: str, allowed: Sequence[str] = UNKNOWN_POLICIES) -> str:
    if unknown_user not in allowed:
        raise ValueError(f"unknown_user={unknown_user!r}; expected one of {list(allowed)}")
    return unknown_user


def model_dir(run_dir: str | os.PathLike) -> pathlib.Path:
    """The artifact directory of a run directory (or the artifact directory itself)."""
    from pluralign.export import MODEL_DIR

    path = pathlib.Path(run_dir)
    return path / MODEL_DIR if not (path / "model.json").is_file() and (path / MODEL_DIR / "model.json").is_file() else path


def run_name(run_dir: str | os.PathLike) -> str:
    """A readable name for a run: its directory's name (the run's, not `model/`'s)."""
    path = model_dir(run_dir).resolve()
    from pluralign.export import MODEL_DIR

    return path.parent.name if path.name == MODEL_DIR else path.name


@dataclasses.dataclass(frozen=True)
class RewardOptions:
    """How the adapter loads a run: which seed and the `PersonalizedReward` options."""

    seed: int | None = None
    capacity: int = 64  # support comparisons per registered user
    split_mode: str | None = None


def scorer_for(run_dir: str | os.PathLike, options: RewardOptions, trained: Any = None) -> "Scorer":
    """The process's `Scorer` of a run, loaded on first use (or built from an already loaded
    `TrainedModel`) and kept for every later call in this process."""
    path = model_dir(run_dir).resolve()
    key = (os.getpid(), str(path), options)
    if key not in _SCORERS:
        if trained is None:
            import pluralign

            trained = pluralign.load(path, seed=options.seed)
        _SCORERS[key] = Scorer(trained.reward(capacity=options.capacity, split_mode=options.split_mode))
    return _SCORERS[key]


# ------------------------------------------------------------------ texts

def as_text(x: Any, separator: str = "\n\n") -> str:
    """A prompt or completion as one string: a str as it is; one message as its text; a
    conversation (a list of `{"role", "content"}` messages) as its messages' contents joined by
    `separator`, roles dropped — so a one-turn conversation gives exactly its text, as a plain-text
    dataset has it, and the same text the importers give it (`pluralign.data.importers`)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return message_text(x)
    if isinstance(x, (list, tuple)):
        return conversation_text(x, separator)
    raise TypeError(f"expected a text or a list of chat messages, got {type(x).__name__}")


def is_text(x: Any) -> bool:
    """A text as the encoders take it: a str or a (prompt, response) pair of str."""
    return isinstance(x, str) or isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x)


# ------------------------------------------------------------------ users

def user_id_of(label: Any, key: str = "user_id") -> Any:
    """A user id from a dataset value: the value itself, or its `key` entry when it is a dict."""
    return label.get(key) if isinstance(label, dict) else label


class Users:
    """Users an adapter scores besides the run's seen users: each registered with a few answered
    comparisons (`Support`, inferred once per process by the evaluation protocol's inference) or
    an exported state vector. Pickles with its registrations, without inferred states."""

    def __init__(self):
        self.registered: dict[str, Any] = {}  # str(user id) -> Support | UserState
        self.inferred: dict[str, np.ndarray] = {}  # process-local: str(user id) -> [S]

    def __getstate__(self):
        return {"registered": self.registered}

    def __setstate__(self, state):
        self.registered, self.inferred = state["registered"], {}

    def add(self, user_id: Any, support: Any = None, state: Any = None) -> None:
        from pluralign.export import Support, UserState

        if (support is None) == (state is None):
            raise ValueError("add_user needs exactly one of support=Support(...) or state=[S] vector")
        if support is not None and not isinstance(support, Support):
            raise TypeError(f"support must be a pluralign.export.Support, got {type(support).__name__}")
        key = str(user_id)
        self.registered[key] = support if support is not None else UserState(np.asarray(state, np.float32))
        self.inferred.pop(key, None)

    def state(self, scorer: "Scorer", key: str) -> np.ndarray:
        """[S] the state of a registered user."""
        if key not in self.inferred:
            self.inferred[key] = scorer.state_of_registered(self.registered[key])
        return self.inferred[key]

    def resolve(self, scorer: "Scorer", user_ids: Sequence[Any], unknown_user: str) -> tuple[np.ndarray, np.ndarray]:
        """(states [B, S], unknown [B] bool) for B samples' user ids: a registered user's state, else
        a seen user's learned state, else — unknown, which includes users the run held out (their
        states were never learned) — the population's (0-shot) state, or a KeyError
        (`unknown_user="error"`)."""
        check_policy(unknown_user)
        states = np.empty((len(user_ids), scorer.state_dim), np.float32)
        unknown = np.zeros(len(user_ids), bool)
        for i, uid in enumerate(user_ids):  # host lookups only; no model call per sample
            key = None if uid is None else str(uid)
            if key in self.registered:
                states[i] = self.state(scorer, key)
            elif key in scorer.seen_row:
                states[i] = scorer.seen_states[scorer.seen_row[key]]
            else:
                states[i], unknown[i] = scorer.population_state, True
        if unknown.any() and unknown_user == "error":
            shown = sorted({str(user_ids[i]) for i in np.flatnonzero(unknown)})
            raise KeyError(f"{int(unknown.sum())} samples of users the run does not know and no one registered: "
                           f"{shown[:10]}{' ...' if len(shown) > 10 else ''}; register them with add_user(...) "
                           "or choose unknown_user='population' or 'none'")
        return states, unknown


# ------------------------------------------------------------------ scoring

def bucket(n: int) -> int:
    """The padded batch size for n samples (a power of two), so varying batch sizes compile a
    handful of programs rather than one per size."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class Scorer:
    """One loaded run's reward, as the adapters call it: B (prompt, response, user state) samples
    -> B rewards, texts embedded in one encoder batch and scored in one jitted call."""

    def __init__(self, reward: Any):
        from pluralign.export import Support

        self.reward = reward
        trained = reward.trained
        self.state_dim = reward.state_dim
        self.seen_states = np.asarray(trained.seen_states, np.float32)  # [n_users, S]
        self.seen_row = {str(uid): row for row, (uid, split) in enumerate(zip(trained.users["user_id"], trained.users["split"]))
                         if split == "seen"}
        # A new user with no answers: the evaluation protocol's 0-shot state (the prior mean).
        empty = np.zeros((0, reward.dim), np.float32)
        self.population_state = np.asarray(reward.infer(Support(e_a=empty, e_b=empty)), np.float32)
        data_config = trained.record.get("data_config") or {}
        self.embed_with_prompt = bool(data_config.get("embed_with_prompt", False))  # how the run's items were embedded

    def embeddings(self, texts: Sequence[Any]) -> np.ndarray:
        """[n, D] embeddings of texts (str, or (prompt, response) pairs), or of embeddings as given."""
        if len(texts) and is_text(texts[0]):
            return self.reward.embed_texts(list(texts))
        return np.asarray(texts, np.float32)

    def state_of_registered(self, user: Any) -> np.ndarray:
        """[S] a registered user's state: a `UserState` as given, a `Support` (embeddings or texts;
        a text support's `e_x`, if any, is one prompt or one per comparison) inferred."""
        from pluralign.export import Support

        if isinstance(user, Support):
            k = len(user.e_a)
            prompts = [user.e_x] * k if isinstance(user.e_x, str) else user.e_x
            e_x = None if prompts is None else self.embeddings(prompts)
            if prompts is not None and is_text(prompts[0]) and is_text(user.e_a[0]) and self.embed_with_prompt:
                e_a, e_b = self.embeddings(list(zip(prompts, user.e_a))), self.embeddings(list(zip(prompts, user.e_b)))
            else:
                e_a, e_b = self.embeddings(user.e_a), self.embeddings(user.e_b)
            user = dataclasses.replace(user, e_a=e_a.reshape(k, -1), e_b=e_b.reshape(k, -1), e_x=e_x)
        return np.asarray(self.reward.user_state(user), np.float32)

    def score(self, prompts: Sequence[str] | None, responses: Sequence[str], states: np.ndarray,
              embed_with_prompt: bool | None = None) -> np.ndarray:
        """[B] rewards of B responses (to B prompts, or None: no prompt) for users with states [B, S].

        The prompt is embedded on its own and passed as the model's prompt; a response alone, or,
        where the run's items were embedded as (prompt, response) conversations (`embed_with_prompt`,
        read from the run's data config unless given), together with its prompt."""
        from pluralign.export import UserState

        B = len(responses)
        if B == 0:
            return np.zeros((0,), np.float32)
        pairs = self.embed_with_prompt if embed_with_prompt is None else embed_with_prompt
        if pairs and prompts is None:
            raise ValueError("responses embedded with their prompts (embed_with_prompt) need prompts")
        items = list(zip(prompts, responses)) if pairs else list(responses)
        texts = items + (list(prompts) if prompts is not None else [])
        e = self.embeddings(texts)  # one encoder batch for responses and prompts
        n = bucket(B)
        pad = lambda x: np.concatenate([x, np.repeat(x[-1:], n - B, axis=0)])  # noqa: E731  rows are independent
        e_y = pad(e[:B])[:, None, :]  # [n, 1, D]
        e_x = pad(e[B:]) if prompts is not None else None  # [n, D]
        users = [UserState(s) for s in pad(states)]
        return np.asarray(self.reward(e_x, e_y, users))[:B, 0]


def to_floats(rewards: np.ndarray, unscored: np.ndarray | None = None) -> list:
    """Python floats, None where a sample is unscored."""
    return [None if unscored is not None and unscored[i] else float(r) for i, r in enumerate(np.asarray(rewards))]

