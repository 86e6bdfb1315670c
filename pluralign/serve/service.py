"""What the reward server does, without HTTP: score batches of samples, take a new user's answers,
read a user's state. Every method runs on the server's one model thread (`batching.Batcher`), so
nothing here is shared between threads.

Scoring reuses the adapters' `Scorer` (texts embedded in one encoder batch, every sample scored
for its own user in one jitted call) and their `Users` registry; a user who posts answers is a
registered user whose `Support` is every answer so far, inferred by the run's few-shot inference
— the same state an `OnlineUser` reaches after the same comparisons — and logged (`AnswerLog`)
before the answer is acknowledged.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from pluralign.integrations._common import RewardOptions, Users, check_policy, is_text, model_dir, run_name, scorer_for
from pluralign.serve.answers import ANSWERS_FILE, AnswerLog

ANSWER_KEYS = ("chosen", "rejected", "prompt", "label")


@dataclasses.dataclass
class ScoreJob:
    """One request's B samples: prompts (texts or [D] vectors; None: no prompt), responses, user ids."""

    prompts: list | None
    responses: list
    user_ids: list

    def kind(self) -> tuple[bool, bool]:
        """Samples of one kind can share an encoder batch and a scoring call."""
        return self.prompts is None, bool(self.responses) and is_text(self.responses[0])


class RewardService:
    """A loaded run's rewards for the server: seen users, users who answered, the unknown-user policy."""

    def __init__(self, run_dir: str | os.PathLike, *, options: RewardOptions = RewardOptions(),
                 unknown_user: str = "population", answers_path: str | os.PathLike | None = None, trained: Any = None):
        self.run_dir = pathlib.Path(run_dir)
        self.unknown_user = check_policy(unknown_user)
        self.scorer = scorer_for(run_dir, options, trained)
        self.name = run_name(run_dir)
        self.users = Users()
        self.answers: dict[str, list[dict]] = {}  # str(user id) -> every answer acknowledged
        self.log = AnswerLog(answers_path or self.run_dir / ANSWERS_FILE)
        for record in self.log.records:  # replay: the state is a function of all answers, inferred once per user
            self.answers.setdefault(str(record["user"]), []).extend(record["answers"])
        for key, answers in self.answers.items():
            try:
                self._register(key, answers)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{self.log.path}: user {key!r}'s logged answers no longer fit run {self.name}: {e}") from None

    # ------------------------------------------------------------------ scoring
    def score(self, jobs: Sequence[ScoreJob]) -> list:
        """For each job, (rewards [B], unknown [B] bool) or the exception that job alone raised."""
        results: list = [None] * len(jobs)
        groups: dict[tuple, list] = {}
        for i, job in enumerate(jobs):
            try:
                states, unknown = self.users.resolve(self.scorer, job.user_ids, self.unknown_user)
            except (KeyError, ValueError, TypeError) as e:
                results[i] = e
                continue
            groups.setdefault(job.kind(), []).append((i, job, states, unknown))
        for members in groups.values():
            try:
                rewards = self._score_together(members)
            except (ValueError, TypeError):  # someone's bad input: score each alone to find whose
                rewards = None
            for n, (i, job, states, unknown) in enumerate(members):
                try:
                    r = rewards[n] if rewards is not None else self._score_together([(i, job, states, unknown)])[0]
                    results[i] = (r, unknown)
                except (ValueError, TypeError) as e:
                    results[i] = e
        return results

    def _score_together(self, members: list) -> list[np.ndarray]:
        """One encoder batch and one scoring call for several jobs of one kind -> each job's rewards."""
        jobs = [job for _, job, _, _ in members]
        prompts = None if jobs[0].prompts is None else [p for job in jobs for p in job.prompts]
        rewards = self.scorer.score(prompts, [r for job in jobs for r in job.responses],
                                    np.concatenate([states for _, _, states, _ in members]))
        return np.split(rewards, np.cumsum([len(job.responses) for job in jobs])[:-1])

    # ------------------------------------------------------------------ users
    def _support(self, answers: list[dict]):
        from pluralign.export import Support

        prompts = [a.get("prompt") for a in answers]
        if any(p is None for p in prompts) and any(p is not None for p in prompts):
            raise ValueError("a user's answers must all have a prompt or all have none")
        return Support(e_a=[a["chosen"] for a in answers], e_b=[a["rejected"] for a in answers],
                       label=[float(a.get("label", 1.0)) for a in answers], e_x=None if prompts[0] is None else prompts)

    def _register(self, key: str, answers: list[dict]) -> np.ndarray:
        support = self._support(answers)
        state = self.scorer.state_of_registered(support)
        if not np.isfinite(state).all():
            raise ValueError("the inferred state is not finite")
        self.users.add(key, support=support)
        self.users.inferred[key] = state
        return state

    def add_answers(self, user_id: str, answers: list[dict]) -> dict:
        """Adds a new user's answered comparisons: infers the state from all of them, logs the new
        ones (synced to disk), then makes the new state the user's; a failure changes nothing."""
        key = str(user_id)
        if key in self.scorer.seen_row:
            raise ValueError(f"user {key!r} is a seen user of run {self.name}: their state was learned in training")
        if not answers:
            raise ValueError("no answers given")
        every = self.answers.get(key, []) + list(answers)
        support = self._support(every)
        state = self.scorer.state_of_registered(support)  # raises on bad input before anything is logged
        if not np.isfinite(state).all():
            raise ValueError(f"user {key!r}'s answers give a non-finite state")
        self.log.append({"user": key, "answers": list(answers)})
        self.users.add(key, support=support)
        self.users.inferred[key] = state
        self.answers[key] = every
        return self.user(key)

    def user(self, user_id: str) -> dict:
        """{"user", "kind": "answered" | "seen", "answers": k, "state": [S]}; KeyError for a user the server does not know."""
        key = str(user_id)
        if key in self.users.registered:
            kind, state = "answered", self.users.state(self.scorer, key)
        elif key in self.scorer.seen_row:
            kind, state = "seen", self.scorer.seen_states[self.scorer.seen_row[key]]
        else:
            raise KeyError(f"user {key!r} is neither a seen user of run {self.name} nor one who posted answers")
        return {"user": key, "kind": kind, "answers": len(self.answers.get(key, [])), "state": np.asarray(state).tolist()}

    def describe(self) -> dict:
        record = self.scorer.reward.trained.record
        return {"run": self.name, "model_dir": str(model_dir(self.run_dir)), "model": record.get("model"),
                "dim": self.scorer.reward.dim, "state_dim": self.scorer.state_dim, "unknown_user": self.unknown_user,
                "seen_users": len(self.scorer.seen_row), "answered_users": len(self.answers),
                "answers_log": str(self.log.path)}
