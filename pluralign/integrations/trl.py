"""A pluralign run as a TRL reward function (GRPO, RLOO, online DPO): each completion is scored
for the user of its dataset row.

    from pluralign.integrations.trl import reward_function
    reward = reward_function("runs/pal_a")                  # the dataset has a "user_id" column
    trainer = GRPOTrainer(..., reward_funcs=[reward], train_dataset=dataset)

TRL calls `reward(prompts=[...], completions=[...], completion_ids=[...], **columns)`, every
dataset column but `prompt` a keyword list aligned with the completions, plus `trainer_state`
(and, in newer versions, `log_extra` / `log_metric`). The callable is a plain class instance
that pickles as its run directory, options and registered users — no model — so TRL can ship
it to a reward worker process, where the model is loaded on first call and kept for that
process. TRL itself is not imported.

Conversational prompts and completions (lists of `{"role", "content"}` messages) are scored as
their messages' contents joined by a blank line (`message_separator`), roles dropped.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from pluralign.integrations._common import RewardOptions, Users, as_text, check_policy, run_name, scorer_for, to_floats

UNKNOWN_USERS_METRIC = "pluralign/unknown_users"


class PluralignRewardFunction:
    """`f(prompts, completions, completion_ids=None, **columns) -> list[float | None]`: the run's
    reward of each completion for the user in `columns[user_column]`.

    Users: a registered user (`add_user`), else a seen user of the run, else unknown — scored with
    the population's reward (`unknown_user="population"`), left unscored (`"none"`: None, which
    TRL treats as a missing reward) or refused (`"error"`). Each call reports the number of samples
    of unknown users through `log_metric("pluralign/unknown_users", n)` when TRL passes one, and
    keeps the running total in `unknown_count`.
    """

    def __init__(self, run_dir: str | os.PathLike, *, user_column: str | None = "user_id", unknown_user: str = "population",
                 name: str | None = None, options: RewardOptions = RewardOptions(), use_prompt: bool = True,
                 embed_with_prompt: bool | None = None, message_separator: str = "\n\n"):
        self.run_dir = str(run_dir)
        self.user_column = user_column  # None: every sample is scored for the population
        self.unknown_user = check_policy(unknown_user)
        self.__name__ = name or f"pluralign_{run_name(run_dir)}"  # TRL logs rewards/<__name__>/...
        self.options = options
        self.use_prompt = use_prompt  # False: a run trained without prompts
        self.embed_with_prompt = embed_with_prompt  # None: as the run's data config says
        self.message_separator = message_separator
        self.users = Users()
        self.unknown_count = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.run_dir!r}, user_column={self.user_column!r}, unknown_user={self.unknown_user!r})"

    @property
    def scorer(self):
        """The run's scorer in this process (loaded on first use)."""
        return scorer_for(self.run_dir, self.options)

    def add_user(self, user_id: Any, support: Any = None, *, state: Any = None) -> None:
        """Registers a user the run has not seen: `support=pluralign.export.Support(...)` with a few
        answered comparisons (embeddings, or texts embedded with the run's encoder; inferred once per
        process by the run's few-shot inference), or `state=` an exported state vector [S]."""
        self.users.add(user_id, support=support, state=state)

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                 completion_ids: Any = None, **kwargs: Any) -> list:
        completions = list(completions)
        if self.user_column is None:
            user_ids = [None] * len(completions)
        elif self.user_column in kwargs:
            user_ids = list(kwargs[self.user_column])
        else:
            raise KeyError(f"{self.__name__}: the dataset has no column {self.user_column!r} "
                           f"(columns passed: {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}); "
                           "set user_column=... or user_column=None for the population reward")
        if len(user_ids) != len(completions) or (prompts is not None and len(prompts) != len(completions)):
            raise ValueError(f"{len(completions)} completions, {len(user_ids)} user ids, "
                             f"{'no' if prompts is None else len(prompts)} prompts")
        if not completions:
            return []
        scorer = self.scorer
        policy = self.unknown_user if self.user_column is not None else "population"
        states, unknown = self.users.resolve(scorer, user_ids, policy)
        texts = [as_text(c, self.message_separator) for c in completions]
        prompt_texts = [as_text(p, self.message_separator) for p in prompts] if self.use_prompt and prompts is not None else None
        rewards = scorer.score(prompt_texts, texts, states, self.embed_with_prompt)
        if self.user_column is not None:
            self.unknown_count += int(unknown.sum())
            log_metric = kwargs.get("log_metric")
            if log_metric is not None:
                log_metric(UNKNOWN_USERS_METRIC, float(unknown.sum()))
        return to_floats(rewards, unknown if policy == "none" else None)


def reward_function(run_or_trained: Any, user_column: str | None = "user_id", unknown_user: str = "population",
                    name: str | None = None, *, seed: int | None = None, capacity: int = 64, split_mode: str | None = None,
                    use_prompt: bool = True, embed_with_prompt: bool | None = None,
                    message_separator: str = "\n\n") -> PluralignRewardFunction:
    """A TRL reward function of a run directory or a loaded `TrainedModel` (its seed is kept, and in
    this process its already loaded model is reused). See `PluralignRewardFunction`."""
    from pluralign.export import TrainedModel

    trained = run_or_trained if isinstance(run_or_trained, TrainedModel) else None
    options = RewardOptions(seed=trained.seed if trained is not None else seed, capacity=capacity, split_mode=split_mode)
    run_dir = trained.path if trained is not None else run_or_trained
    fn = PluralignRewardFunction(run_dir, user_column=user_column, unknown_user=unknown_user, name=name, options=options,
                                 use_prompt=use_prompt, embed_with_prompt=embed_with_prompt,
                                 message_separator=message_separator)
    if trained is not None:
        scorer_for(run_dir, options, trained=trained)  # this process's cache starts with the given model
    return fn
