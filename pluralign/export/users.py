"""User-embedding export: every seen user's state — and new users', inferred from their answered
comparisons by the evaluation protocol's few-shot inference (`PersonalizedReward.infer`) — as
`.npy` + a parquet of ids, a README of what each space means, and a 2-D PCA map of users (PNG),
coloured by true group if known.

What the spaces are comes from the model's `describe_user_states(states [U, S]) ->
{name: (array [U, ...], description)}` hook (PAL: mixture weights and ideal points, VPL:
posterior means and variances, DPA: directions, personalized GPM: gate weights and gates); by
default a model exports its raw user state φ_u (`user_state.npy`) with a generic description.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.export.reward import Support
from pluralign.models import base

ANSWER_COLUMNS = ("user_id", "chosen", "rejected")  # and optionally "prompt", "label" (P(chosen ≻ rejected))


def describe_user_states(model: base.PreferenceModel, states: jax.Array) -> dict:
    """{name: (array [U, ...], description)} for [U, S] user states of `model`
    (`PreferenceModel.describe_user_states`)."""
    return model.describe_user_states(states)


def _pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [U, 2], explained variance ratio [2]) of the rows of x (zeros where S < 2)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] == 0 or len(x) < 2:
        return np.zeros((len(x), 2)), np.zeros(2)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    coords = np.zeros((len(x), 2))
    n = min(2, len(s))
    coords[:, :n] = u[:, :n] * s[:n]
    total = np.square(s).sum()
    ratio = np.zeros(2)
    ratio[:n] = np.square(s[:n]) / total if total > 0 else 0.0
    return coords, ratio


def read_answers(path: str | os.PathLike) -> dict[str, Support]:
    """{user id: Support} of new users' answered comparisons in a CSV, JSONL or Parquet table with
    columns `user_id`, `chosen`, `rejected` (texts) and optionally `prompt` (text) and `label`
    (P(chosen ≻ rejected), default 1), in the order the users first appear. The texts stay texts:
    the reward embeds them with the run's encoder, as it embedded the run's items."""
    from pluralign.data.importers import read_table

    table = read_table(path, text_columns=("user_id", "chosen", "rejected", "prompt"))
    missing = [c for c in ANSWER_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (new users' answers need columns {list(ANSWER_COLUMNS)}, "
                         f"optionally 'prompt' and 'label'; it has {table.column_names})")
    rows = table.to_pylist()
    text = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731  CSV text columns are read as bytes
    by_user: dict[str, list[dict]] = {}
    for i, row in enumerate(rows):
        for column in ("user_id", "chosen", "rejected"):
            if row[column] is None:
                raise ValueError(f"{path}: row {i}: {column} is empty")
        by_user.setdefault(str(text(row["user_id"])), []).append(row)
    supports = {}
    for user, answers in by_user.items():
        prompts = [text(a.get("prompt")) for a in answers]
        if len({p is None for p in prompts}) > 1:
            raise ValueError(f"{path}: user {user!r} has a prompt on some answers but not on others")
        labels = [a.get("label") for a in answers]
        supports[user] = Support(e_a=[text(a["chosen"]) for a in answers], e_b=[text(a["rejected"]) for a in answers],
                                 e_x=None if prompts[0] is None else prompts,
                                 label=None if all(v is None for v in labels) else [1.0 if v is None else float(v) for v in labels])
    return supports


def new_user_states(trained, users: Mapping[str, Support]) -> np.ndarray:
    """[U, S] states of new users from their answered comparisons (`Support`s of embeddings or texts):
    `PersonalizedReward.infer`, the evaluation protocol's few-shot inference with the prior and gate
    the run chose for each user's number of answers."""
    if not users:
        return np.zeros((0, *np.shape(trained.seen_states)[1:]), np.float32)
    most = max(len(s.e_a) for s in users.values())
    reward = trained.reward(capacity=1 << max(0, math.ceil(math.log2(max(most, 1)))))  # one compiled shape for all
    return np.stack([np.asarray(reward.infer(support), np.float32) for support in users.values()])


def export_user_embeddings(trained, out_dir: str | os.PathLike, *, new_users: Mapping[str, Support] | None = None,
                           seen: bool = True, map_space: str | None = None) -> dict:
    """Writes `<space>.npy` for every space of the users' states, `users.parquet` (row i of every
    .npy ↔ row i here: row, user_id, kind[, group]), `README.md` and `users_pca.png`. Returns
    {space: shape}.

    The users are the run's seen users (their learned states; `seen=False` leaves them out), then
    `new_users` — {user id: Support} of their answered comparisons (`read_answers` reads a table of
    them) — inferred as the evaluation infers unseen users (`new_user_states`); a new user's `row` is
    -1 and `kind` "new"."""
    from pluralign.plotting import pyplot

    plt = pyplot()

    out = pathlib.Path(out_dir)
    model = trained.model
    new_users = dict(new_users or {})
    clash = sorted(set(new_users) & set(trained.users["user_id"].astype(str).tolist()))
    if clash:
        raise ValueError(f"new users {clash[:5]} are ids of the run's dataset; give new users ids of their own")
    rows = trained.seen_users if seen else np.zeros((0,), np.int32)
    if not len(rows) and not new_users:
        raise ValueError("no users to export: seen=False and no new_users")
    states = np.concatenate([np.asarray(trained.seen_states[jnp.asarray(rows)], np.float32), new_user_states(trained, new_users)])
    spaces = describe_user_states(model, jnp.asarray(states))
    out.mkdir(parents=True, exist_ok=True)
    shapes = {}
    for name, (array, _) in spaces.items():
        np.save(out / f"{name}.npy", np.asarray(array))
        shapes[name] = tuple(np.shape(array))
    n_new = len(new_users)
    columns = {"row": pa.array(np.concatenate([rows, np.full(n_new, -1)]).astype(np.int32)),
               "user_id": pa.array(trained.users["user_id"][rows].tolist() + list(new_users), pa.string()),
               "kind": pa.array(["seen"] * len(rows) + ["new"] * n_new, pa.string())}
    group = trained.users.get("group")
    if group is not None:
        columns["group"] = pa.array(np.concatenate([np.asarray(group)[rows], np.full(n_new, -1)]).astype(np.int32))
    pq.write_table(pa.table(columns), out / "users.parquet")

    map_space = map_space or next(iter(spaces))
    coords, ratio = _pca_2d(np.asarray(spaces[map_space][0]))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    colour = np.asarray(group)[rows] if group is not None and len(rows) else None
    points = ax.scatter(coords[:len(rows), 0], coords[:len(rows), 1], c=colour, cmap="tab10" if colour is not None else None, s=14)
    if colour is not None:
        ax.legend(*points.legend_elements(), title="true group", fontsize=8)
    if n_new:
        ax.scatter(coords[len(rows):, 0], coords[len(rows):, 1], marker="x", c="black", s=30, label="new users")
        for (x, y), user in zip(coords[len(rows):], new_users):
            ax.annotate(user, (x, y), fontsize=7)
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
    ax.set_title(f"{trained.name} users: {map_space} (seed {trained.seed})")
    fig.tight_layout()
    fig.savefig(out / "users_pca.png", dpi=120)
    plt.close(fig)

    lines = [f"# User embeddings of a `{trained.name}` model (seed {trained.seed})", "",
             f"{len(rows)} seen user(s) and {n_new} new user(s); row i of every `.npy` is the user in row i of "
             "`users.parquet` (`row` = index in the model's user table, -1 for a new user; `user_id` = the "
             "dataset's id, or the new user's; `kind` = seen (the learned state) or new (inferred from the "
             "user's answered comparisons by the evaluation's few-shot inference)"
             + (", `group` = the true group of synthetic data, -1 for a new user" if group is not None else "") + ").", ""]
    lines += [f"- `{name}.npy` {shapes[name]}: {description}" for name, (_, description) in spaces.items()]
    lines += ["", f"`users_pca.png`: the first two principal components of `{map_space}`."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return shapes


def main(argv: list[str] | None = None) -> None:
    """`python -m pluralign.export.users RUN_DIR OUT_DIR [--seed S] [--new-users ANSWERS] [--only-new]`:
    export a run's user embeddings (seen users, and new users from a table of their answers)."""
    import argparse

    from pluralign.export.artifact import load

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=None, help="a trained seed (default: the artifact's)")
    parser.add_argument("--new-users", metavar="ANSWERS", default=None,
                        help="CSV/JSONL/Parquet of new users' answers: user_id, chosen, rejected[, prompt, label]")
    parser.add_argument("--only-new", action="store_true", help="export the new users only")
    args = parser.parse_args(argv)
    if args.only_new and args.new_users is None:
        parser.error("--only-new needs --new-users ANSWERS")
    try:
        new_users = read_answers(args.new_users) if args.new_users else None
        shapes = export_user_embeddings(load(args.run_dir, seed=args.seed), args.out_dir, new_users=new_users,
                                        seen=not args.only_new)
    except ValueError as e:
        parser.exit(1, f"pluralign.export.users: error: {e}\n")
    for name, shape in shapes.items():
        print(f"{args.out_dir}/{name}.npy {shape}")


if __name__ == "__main__":
    main()
