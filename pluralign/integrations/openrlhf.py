"""A pluralign run as an OpenRLHF reward function, with the semantics of a remote reward server
(`--reward.remote_url`, OpenRLHF >= 0.10): each sample's label names its user.

    export PLURALIGN_RUN=runs/pal_a      # or: openrlhf.configure("runs/pal_a", ...)
    from pluralign.integrations.openrlhf import reward_func
    reward_func(queries, prompts, labels)   # -> {"rewards": [...], "scores": [...], "extra_logs": {...}}

`queries` are the decoded prompt + response strings, `prompts` the templated prompts, `labels`
the dataset's label values: a user id, or a dict with a "user_id" key (and optionally the raw
"prompt" text, scored instead of the templated one). The response is the query with its prompt
prefix stripped. The run is `configure(run_dir, ...)`'s, else the `PLURALIGN_RUN` environment
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
                           "use_prompt": True, "embed_with_prompt": None}
_USERS = Users()


def configure(run_dir: str | os.PathLike | None = None, *, unknown_user: str = "population", seed: int | None = None,
              capacity: int = 64, split_mode: str | None = None, use_prompt: bool = True,
              embed_with_prompt: bool | None = None) -> None:
    """Sets the run `reward_func` scores with (None: `PLURALIGN_RUN`) and its options; `unknown_user`
    is "population" or "error" (OpenRLHF needs a reward for every sample)."""
    _CONFIG.update(run_dir=run_dir, options=RewardOptions(seed=seed, capacity=capacity, split_mode=split_mode),
                   unknown_user=check_policy(unknown_user, ("population", "error")), use_prompt=use_prompt,
                   embed_with_prompt=embed_with_prompt)


def add_user(user_id: Any, support: Any = None, *, state: Any = None) -> None:
    """Registers a user the run has not seen, with a `Support` or a state vector (see `trl.PluralignRewardFunction.add_user`)."""
    _USERS.add(user_id, support=support, state=state)


def response_of(query: str, prompt: str) -> tuple[str, bool]:
    """(the response: the query without its prompt prefix, whether the prompt was its prefix)."""
    return (query[len(prompt):], True) if query.startswith(prompt) else (query, False)


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any) -> dict:
    """{"rewards": [B floats], "scores": [B floats], "extra_logs": {name: [B floats]}} for B samples."""
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"{len(queries)} queries, {len(prompts)} prompts, {len(labels)} labels")
    if not queries:
        return {"rewards": [], "scores": [], "extra_logs": {"pluralign/unknown_user": [], "pluralign/prompt_not_prefix": []}}
    responses, prefixed = zip(*(response_of(q, p) for q, p in zip(queries, prompts)))
    scorer = scorer_for(run_dir_from(_CONFIG["run_dir"]), _CONFIG["options"])
    states, unknown = _USERS.resolve(scorer, [user_id_of(label) for label in labels], _CONFIG["unknown_user"])
    raw = [label.get("prompt", p) if isinstance(label, dict) else p for label, p in zip(labels, prompts)]
    rewards = to_floats(scorer.score(raw if _CONFIG["use_prompt"] else None, list(responses), states, _CONFIG["embed_with_prompt"]))
    return {"rewards": rewards, "scores": list(rewards),
            "extra_logs": {"pluralign/unknown_user": unknown.astype(float).tolist(),
                           "pluralign/prompt_not_prefix": [float(not p) for p in prefixed]}}
