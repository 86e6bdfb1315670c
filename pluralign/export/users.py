"""User-embedding export: every seen user's state as `.npy` + a parquet of ids, a README of
what each space means, and a 2-D PCA map of users (PNG), coloured by true group if known.

What the spaces are comes from the model's `describe_user_states(states [U, S]) ->
{name: (array [U, ...], description)}` hook (PAL: mixture weights and ideal points, VPL:
posterior means and variances, DPA: directions, personalized GPM: gate weights and gates); by
default a model exports its raw user state φ_u (`user_state.npy`) with a generic description.
"""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.models import base


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


def export_user_embeddings(trained, out_dir: str | os.PathLike, *, map_space: str | None = None) -> dict:
    """Writes `<space>.npy` for every space of the seen users' states, `users.parquet`
    (row i of every .npy ↔ row i here: row, user_id[, group]), `README.md` and `users_pca.png`.
    Returns {space: shape}."""
    from pluralign.plotting import pyplot

    plt = pyplot()

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = trained.model
    rows = trained.seen_users
    states = trained.seen_states[jnp.asarray(rows)]
    spaces = describe_user_states(model, states)
    shapes = {}
    for name, (array, _) in spaces.items():
        np.save(out / f"{name}.npy", np.asarray(array))
        shapes[name] = tuple(np.shape(array))
    columns = {"row": pa.array(rows.astype(np.int32)), "user_id": pa.array(trained.users["user_id"][rows].tolist(), pa.string())}
    group = trained.users.get("group")
    if group is not None:
        columns["group"] = pa.array(np.asarray(group)[rows].astype(np.int32))
    pq.write_table(pa.table(columns), out / "users.parquet")

    map_space = map_space or next(iter(spaces))
    coords, ratio = _pca_2d(np.asarray(spaces[map_space][0]))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    colour = np.asarray(group)[rows] if group is not None else None
    points = ax.scatter(coords[:, 0], coords[:, 1], c=colour, cmap="tab10" if colour is not None else None, s=14)
    if colour is not None:
        ax.legend(*points.legend_elements(), title="true group", fontsize=8)
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
    ax.set_title(f"{trained.name} users: {map_space} (seed {trained.seed})")
    fig.tight_layout()
    fig.savefig(out / "users_pca.png", dpi=120)
    plt.close(fig)

    lines = [f"# User embeddings of a `{trained.name}` model (seed {trained.seed})", "",
             f"{len(rows)} seen users; row i of every `.npy` is the user in row i of `users.parquet` "
             "(`row` = index in the model's user table, `user_id` = the dataset's id"
             + (", `group` = the true group of synthetic data" if group is not None else "") + ").", ""]
    lines += [f"- `{name}.npy` {shapes[name]}: {description}" for name, (_, description) in spaces.items()]
    lines += ["", f"`users_pca.png`: the first two principal components of `{map_space}`."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return shapes


def main(argv: list[str] | None = None) -> None:
    """`python -m pluralign.export.users RUN_DIR OUT_DIR [--seed S]`: export a run's user embeddings."""
    import argparse

    from pluralign.export.artifact import load

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=None, help="a trained seed (default: the artifact's)")
    args = parser.parse_args(argv)
    shapes = export_user_embeddings(load(args.run_dir, seed=args.seed), args.out_dir)
    for name, shape in shapes.items():
        print(f"{args.out_dir}/{name}.npy {shape}")


if __name__ == "__main__":
    main()
