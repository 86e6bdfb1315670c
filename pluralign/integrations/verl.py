"""A pluralign run as a verl custom reward function: the response scored for the user its
dataset row names.

    # verl config: custom_reward_function.path=<this file>, custom_reward_function.name=compute_score
    # and the run in PLURALIGN_RUN (or reward_kwargs run_dir=...)
    compute_score(data_source, solution_str, ground_truth, extra_info={"prompt": ..., "user_id": ...})

`solution_str` is the response alone; the prompt and the user id travel in the row's
`extra_info` (a prompt given as chat messages is joined as in `trl`). `ground_truth` and
`data_source` are not read. The run comes from `reward_kwargs["run_dir"]`, else the
`PLURALIGN_RUN` environment variable; its model is loaded once per process. verl's batch reward
manager calls `compute_score_batch` instead (one encoder batch and one model call for all rows).
An unknown user gets the population's reward (`unknown_user="population"`) or raises ("error").
Returns a float, or `{"score": r, "unknown_user": 0.0 | 1.0}` with `return_dict=True`.
"""

from __future__ import annotations

from typing import Any, Sequence

from pluralign.integrations._common import RewardOptions, Users, as_text, check_policy, run_dir_from, scorer_for, to_floats

_USERS = Users()


def add_user(user_id: Any, support: Any = None, *, state: Any = None) -> None:
    """Registers a user the run has not seen, with a `Support` or a state vector (see
    `trl.PluralignRewardFunction.add_user`), in this process."""
    _USERS.add(user_id, support=support, state=state)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None], *, run_dir: str | None = None, unknown_user: str = "population",
                        seed: int | None = None, capacity: int = 64, split_mode: str | None = None, use_prompt: bool = True,
                        embed_with_prompt: bool | None = None, return_dict: bool = False, **_: Any) -> list:
    """Rewards of B responses, each for the user in its `extra_info` (see the module docstring)."""
    if not solution_strs:
        return []
    infos = [info or {} for info in extra_infos]
    scorer = scorer_for(run_dir_from(run_dir), RewardOptions(seed=seed, capacity=capacity, split_mode=split_mode))
    states, unknown = _USERS.resolve(scorer, [info.get("user_id") for info in infos],
                                    check_policy(unknown_user, ("population", "error")))
    prompts = [as_text(info.get("prompt", "")) for info in infos] if use_prompt else None
    rewards = to_floats(scorer.score(prompts, list(solution_strs), states, embed_with_prompt))
    if return_dict:
        return [{"score": r, "unknown_user": float(u)} for r, u in zip(rewards, unknown)]
    return rewards


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **reward_kwargs: Any) -> float | dict:
    """The reward of one response for the user in `extra_info["user_id"]`; `reward_kwargs` as
    `compute_score_batch`'s keywords (`run_dir`, `unknown_user`, `return_dict`, ...)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **reward_kwargs)[0]
