"""A pluralign run as an OpenRLHF reward function, with the semantics of a remote reward server
(`--reward.remote_url`, OpenRLHF >= 0.10): each sample's label names its user.

    export PLURALIGN_RUN=runs/pal_a      # or: openrlhf.configure("runs/pal_a", ...)
    from pluralign.integrations.openrlhf import reward_func
    reward_func(queries, prompts, labels)   # -> {"rewards": [...], "scores": [...], "extra_logs": {...}}

`queries` are the decoded prompt + response strings, `prompts` the templated prompts, `labels`
the dataset's label values: a user id, or a dict with a "user_id" key (and optionally the raw
"prompt" text, scored instead of the templated one). The response is the query with its prompt
prefix stripped, and the tokenizer's special tokens removed where `configure(special_tokens=...)`
names them (OpenRLHF decodes queries with them). The run is `configure(run_dir, ...)`'s, else the `PLURALIGN_RUN` environment
variable's; its model is loaded once per process. Rewards are lists of floats (OpenRLHF also
accepts tensors; torch is not imported). `extra_logs` holds per-sample lists:
`pluralign/unknown_user` (1.0 for a user the run does not know, scored with the population's
reward) and `pluralign/prompt_not_prefix` (1.0 where a query did not start with its prompt and
was scored whole).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from pluralign.integrations._common import RewardOptions, Users, check_policy, run_dir_from, scorer_for, to_floats, user_id_of

_CONFIG: dict[str, Any] = {"run_dir": None, "options": RewardOptions(), "unknown_user": "population",
                           "use_prompt": True, "embed_with_prompt": None, "special_tokens": ()}
_USERS = Users()


def configure(run_dir: str | os.PathLike | None = None, *, unknown_user: str = "population", seed: int | None = None,
              capacity: int = 64, split_mode: str | None = None, use_prompt: bool = True,
              embed_with_prompt: bool | None = None, special_tokens: Sequence[str] = ()) -> None:
    """Sets the run `reward_func` scores with (None: `PLURALIGN_RUN`) and its options; `unknown_user`
    is "population" or "error" (OpenRLHF needs a reward for every sample); `special_tokens` (the
    policy tokenizer's `all_special_tokens`) are removed from queries and prompts before scoring."""
    _CONFIG.update(run_dir=run_dir, options=RewardOptions(seed=seed, capacity=capacity, split_mode=split_mode),
                   unknown_user=check_policy(unknown_user, ("population", "error")), use_prompt=use_prompt,
                   embed_with_prompt=embed_with_prompt, special_tokens=tuple(special_tokens))


def add_user(user_id: Any, support: Any = None, *, state: Any = None) -> None:
    """Registers a user the run has not seen, with a `Support` or a state vector (see `trl.PluralignRewardFunction.add_user`)."""
    _USERS.add(user_id, support=support, state=state)


def without_tokens(text: str, special_tokens: Sequence[str]) -> str:
    """`text` with every occurrence of the special tokens removed (longest first, so a token that
    contains another goes whole): OpenRLHF decodes with them, the run's encoder never saw them."""
    for token in sorted(special_tokens, key=len, reverse=True):
        text = text.replace(token, "")
    return text


def response_of(query: str, prompt: str, special_tokens: Sequence[str] = ()) -> tuple[str, bool]:
    """(the response: the query without its prompt prefix and special tokens, whether the prompt was its prefix)."""
    response, prefixed = (query[len(prompt):], True) if query.startswith(prompt) else (query, False)
    return without_tokens(response, special_tokens), prefixed


def samples_of(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
               special_tokens: Sequence[str] = ()) -> tuple[list, list, list, list]:
    """(prompts to score, responses, user ids, whether each query began with its prompt) of B OpenRLHF
    samples: a label's raw "prompt" if it has one, else the templated prompt without special tokens."""
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"{len(queries)} queries, {len(prompts)} prompts, {len(labels)} labels")
    pairs = [response_of(q, p, special_tokens) for q, p in zip(queries, prompts)]
    raw = [label.get("prompt", without_tokens(p, special_tokens)) if isinstance(label, dict) else without_tokens(p, special_tokens)
           for label, p in zip(labels, prompts)]
    return raw, [r for r, _ in pairs], [user_id_of(label) for label in labels], [p for _, p in pairs]


def answer(rewards: list, unknown: Sequence[bool], prefixed: Sequence[bool]) -> dict:
    """OpenRLHF's reply: {"rewards": [B], "scores": [B], "extra_logs": {name: [B floats]}}."""
    return {"rewards": rewards, "scores": list(rewards),
            "extra_logs": {"pluralign/unknown_user": [float(u) for u in unknown],
                           "pluralign/prompt_not_prefix": [float(not p) for p in prefixed]}}


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any) -> dict:
    """{"rewards": [B floats], "scores": [B floats], "extra_logs": {name: [B floats]}} for B samples."""
    raw, responses, user_ids, prefixed = samples_of(queries, prompts, labels, _CONFIG["special_tokens"])
    if not queries:
        return answer([], [], [])
    scorer = scorer_for(run_dir_from(_CONFIG["run_dir"]), _CONFIG["options"])
    states, unknown = _USERS.resolve(scorer, user_ids, _CONFIG["unknown_user"])
    rewards = to_floats(scorer.score(raw if _CONFIG["use_prompt"] else None, responses, states, _CONFIG["embed_with_prompt"]))
    return answer(rewards, unknown, prefixed)
