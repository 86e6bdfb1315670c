"""Per-user preference pairs for DPO-style training of a user-conditioned policy: candidate
responses to each prompt ranked by each user's personalized reward, written as rows
`{"prompt", "chosen", "rejected", "user_id"}` (TRL's DPOTrainer's columns, plus the user).

    pluralign pairs RUN --candidates cands.jsonl --out pairs.jsonl [--users a,b] [--new-users answers.csv]

`cands.jsonl` has one row per prompt: `{"prompt": "...", "responses": ["...", "..."]}` (CSV is not
possible for a list; JSONL or Parquet). Users are the run's seen users (all, or `--users`), and new
users inferred from their answered comparisons (`--new-users`, as `pluralign.export.users` reads
them). For each user and prompt, `--pairs best_worst` (the default) gives one row, the user's best
response against their worst; `--pairs all` every pair the user ranks apart. Pairs closer than
`--min-margin` in reward are left out: the user's preference between them is a coin toss.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from pluralign.export.reward import Support, UserState

PAIR_MODES = ("best_worst", "all")


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Prompts and each prompt's candidate responses (at least two)."""

    prompts: list[str]
    responses: list[list[str]]

    def __post_init__(self):
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.responses)} lists of responses")
        for i, (prompt, responses) in enumerate(zip(self.prompts, self.responses)):
            if not isinstance(prompt, str) or not all(isinstance(r, str) for r in responses):
                raise ValueError(f"candidates row {i}: prompt and responses must be texts")
            if len(responses) < 2:
                raise ValueError(f"candidates row {i}: {len(responses)} response(s); a pair needs at least two")


def read_candidates(path: str | os.PathLike) -> Candidates:
    """Candidates from a JSONL or Parquet table with a `prompt` (text) and a `responses` (list of
    texts) column."""
    from pluralign.data.importers import read_table

    table = read_table(path)
    for column in ("prompt", "responses"):
        if column not in table.column_names:
            raise ValueError(f"{path}: no column {column!r} (candidates need 'prompt' and 'responses', a list of "
                             f"texts; it has {table.column_names})")
    return Candidates(prompts=table.column("prompt").to_pylist(), responses=table.column("responses").to_pylist())


def user_rewards(reward, candidates: Candidates, users: Mapping[str, Any]) -> dict[str, list[np.ndarray]]:
    """{user id: [P] arrays of each prompt's N_p rewards} for users given as the reward takes them (a
    seen id, a `Support`, a `UserState`). Texts are embedded once, with the run's encoder; prompts
    with the same number of candidates are scored in one call per user."""
    prompts, responses = candidates.prompts, candidates.responses
    flat = [r for rs in responses for r in rs]
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    e_y = np.asarray(reward.embeddings(flat, "responses", (2,), prompt=flat_prompts))  # [n, D] (with prompts if the run's items had them)
    e_x = np.asarray(reward.embeddings(prompts, "prompts", (2,), is_prompt=True))  # [P, D]
    offsets = np.cumsum([0] + [len(rs) for rs in responses])
    by_size: dict[int, list[int]] = {}
    for i, rs in enumerate(responses):
        by_size.setdefault(len(rs), []).append(i)
    out = {}
    for user_id, user in users.items():
        state = UserState(np.asarray(reward.user_state(user)))  # a new user is inferred once
        rewards: list = [None] * len(prompts)
        for n, rows in by_size.items():
            ys = np.stack([e_y[offsets[i]:offsets[i] + n] for i in rows])  # [B, n, D]
            if reward.has_scalar_reward:
                got = np.asarray(reward(e_x[rows], ys, [state] * len(rows)))  # [B, n]
            else:  # no scalar reward (GPM): the average preference of each candidate
                got = np.stack([reward.scores(e_x[i], y, state) for i, y in zip(rows, ys)])
            for i, r in zip(rows, got):
                rewards[i] = r
        out[user_id] = rewards
    return out


def ranked_pairs(rewards: np.ndarray, mode: str = "best_worst", min_margin: float = 0.0) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs of N candidates with these rewards: `best_worst` the best
    against the worst, `all` every pair (best chosen first); only pairs whose rewards differ by more
    than `min_margin`."""
    if mode not in PAIR_MODES:
        raise ValueError(f"pairs={mode!r}; expected one of {list(PAIR_MODES)}")
    order = np.argsort(-np.asarray(rewards), kind="stable")  # best first
    candidates = [(order[0], order[-1])] if mode == "best_worst" else [
        (order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    return [(int(a), int(b)) for a, b in candidates if rewards[a] - rewards[b] > min_margin]


def preference_rows(reward, candidates: Candidates, users: Mapping[str, Any], *, mode: str = "best_worst",
                    min_margin: float = 0.0, with_rewards: bool = False) -> list[dict]:
    """Rows `{"prompt", "chosen", "rejected", "user_id"}` (and `chosen_reward`, `rejected_reward`
    with `with_rewards`), user by user, prompt by prompt, ranked by each user's reward."""
    rows = []
    for user_id, per_prompt in user_rewards(reward, candidates, users).items():
        for prompt, responses, r in zip(candidates.prompts, candidates.responses, per_prompt):
            for a, b in ranked_pairs(r, mode, min_margin):
                row = {"prompt": prompt, "chosen": responses[a], "rejected": responses[b], "user_id": str(user_id)}
                if with_rewards:
                    row.update(chosen_reward=float(r[a]), rejected_reward=float(r[b]))
                rows.append(row)
    return rows


def write_rows(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """JSONL (`.jsonl`, one JSON object a line) or Parquet (`.parquet`), written whole or not at all."""
    from pluralign.atomic import write_file_atomic

    path = pathlib.Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        write_file_atomic(path, lambda f: pq.write_table(pa.Table.from_pylist(list(rows)), f))
    elif path.suffix == ".jsonl":
        write_file_atomic(path, lambda f: f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()))
    else:
        raise ValueError(f"--out {path}: use a .jsonl or .parquet file")


def main(argv: list[str]) -> None:
    """`pluralign pairs RUN --candidates FILE --out FILE ...`: per-user preference rows for DPO."""
    import argparse

    import pluralign
    from pluralign.export.users import read_answers

    parser = argparse.ArgumentParser(prog="pluralign pairs", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN", help="a run directory (or its model/ artifact directory)")
    parser.add_argument("--candidates", required=True, help="JSONL/Parquet rows {prompt, responses: [texts]}")
    parser.add_argument("--out", required=True, help="where to write the rows (.jsonl or .parquet)")
    parser.add_argument("--users", default=None, help="comma-separated seen user ids (default: every seen user)")
    parser.add_argument("--new-users", metavar="ANSWERS", default=None,
                        help="CSV/JSONL/Parquet of new users' answers: user_id, chosen, rejected[, prompt, label]")
    parser.add_argument("--pairs", choices=PAIR_MODES, default="best_worst", help="best against worst (default), or every pair")
    parser.add_argument("--min-margin", type=float, default=0.0, help="leave out pairs closer than this in reward")
    parser.add_argument("--with-rewards", action="store_true", help="add chosen_reward and rejected_reward columns")
    parser.add_argument("--seed", type=int, default=None, help="a trained seed (default: the artifact's)")
    args = parser.parse_args(argv)
    if pathlib.Path(args.out).suffix not in (".jsonl", ".parquet"):
        parser.error(f"--out {args.out}: use a .jsonl or .parquet file")
    try:
        trained = pluralign.load(args.run_dir, seed=args.seed)
        if args.users is not None:
            users: dict[str, Any] = {u: u for u in args.users.split(",") if u}
        elif args.new_users is not None:
            users = {}
        else:
            users = {str(trained.users["user_id"][row]): str(trained.users["user_id"][row]) for row in trained.seen_users}
        new_users: dict[str, Support] = read_answers(args.new_users) if args.new_users else {}
        clash = sorted(set(new_users) & set(users))
        if clash:
            raise ValueError(f"--new-users: {clash[:5]} are also seen users; give new users ids of their own")
        candidates = read_candidates(args.candidates)
        most = max([len(s.e_a) for s in new_users.values()] + [1])
        reward = trained.reward(capacity=max(64, most))
        rows = preference_rows(reward, candidates, users | new_users, mode=args.pairs, min_margin=args.min_margin,
                               with_rewards=args.with_rewards)
        write_rows(rows, args.out)
    except (ValueError, KeyError) as e:
        print(f"pluralign pairs: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{args.out}: {len(rows)} rows ({len(users) + len(new_users)} users x {len(candidates.prompts)} prompts, "
          f"pairs={args.pairs}, min margin {args.min_margin})")
