"""A trained model as one directory, loadable without Hydra (`pluralign.load`).

`pluralign.run.run` writes `<run_dir>/model/` at the end of every run:

  model.json          model family + resolved model config, dims, seeds (and each seed's best
                      seen-user validation loss), the default seed, the few-shot inference settings
                      (map or bayes, the prior strength or precision multiplier chosen on unseen-val, steps,
                      learning rate), the data config
  dataset_meta.json   the dataset's meta.json (encoder, user/item ids, truth of synthetic data)
  users.parquet       row (the user's index in the state table), user_id, split, group (if known)
  state/              orbax checkpoint, for *every* seed (stacked): the model's parameters θ
                      ("leaves") and the states φ_u the run scored its seen users with ("seen_states",
                      [n_seeds, n_users, S]); the latter from `model.seen_states(tables, users)`, so a
                      model whose seen states come from their training comparisons (VPL's context
                      sets) needs no dataset at load time

Seeds: a run trains several seeds in one vmapped program, and the artifact keeps all of
them (they are small, and a caller may want an ensemble or seed variance). `load(path)`
selects one — by default the seed with the lowest seen-user validation loss (the run's own
model-selection signal; never a test figure) — and `load(path, seed=s)` picks another by its
seed value. The directory is written to a temporary sibling and renamed into place, so an
interrupted save never leaves a directory that loads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from flax import nnx

from pluralign.checkpoint_io import restore_pytree, save_pytree
from pluralign.errors import ArtifactError, InputTypeError, UnknownUserError
from pluralign.atomic import atomic_dir
from pluralign.rundir import fault_point
from pluralign.jsonio import json_default, write_json_atomic
from pluralign.models import REGISTRY, base
from pluralign.provenance import provenance

FORMAT_VERSION = 1
MODEL_DIR = "model"


def _to_json(x: Any) -> Any:
    return json.loads(json.dumps(x, default=json_default))


def _build_dataclass(cls, fields: dict):
    """A config dataclass from its asdict() form (nested dataclass fields rebuilt too)."""
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in fields.items():
        if name not in known:
            raise ValueError(f"{cls.__name__} has no field {name!r} (artifact written by another version?)")
        default = known[name].default
        if default is dataclasses.MISSING and known[name].default_factory is not dataclasses.MISSING:
            default = known[name].default_factory()
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build_dataclass(type(default), value)
        kwargs[name] = value
    return cls(**kwargs)


def save_model(
    path: str | os.PathLike,
    *,
    model_config: Any,
    dims: base.Dims,
    params: Any,
    seen_states: Any,
    seeds: list[int],
    dataset_meta: dict,
    seen_users: np.ndarray,
    split: dict | None = None,
    best_val_loss: np.ndarray | None = None,
    prior_strength: float = 1.0,
    prior_strength_by_k: dict | None = None,
    prior_strength_by_mode: dict | None = None,
    personalize_by_k: dict | None = None,
    residual_ratio_by_mode: dict | None = None,
    prior_mode: str | None = None,
    inference: str = "map",
    inference_steps: int = 100,
    inference_learning_rate: float = 0.1,
    data_config: Any = None,
    meta_options: Any = None,
) -> pathlib.Path:
    """Writes the artifact atomically. `params` carry a leading seed axis (as the trainer's);
    `seen_states` [n_seeds, n_users, S] are every user row's state as the run scores seen users."""
    path = pathlib.Path(path)
    n_users = dims.n_users
    losses = None if best_val_loss is None else np.asarray(best_val_loss, np.float64).reshape(-1)
    default_index = int(np.nanargmin(losses)) if losses is not None and np.isfinite(losses).any() else 0
    record = {
        "format_version": FORMAT_VERSION,
        "model": model_config.name,
        "model_config": _to_json(dataclasses.asdict(model_config)),
        "dims": {"dim": dims.dim, "n_users": n_users},
        "seeds": [int(s) for s in seeds],
        "best_val_loss": None if losses is None else [float(v) for v in losses],
        "default_seed": int(seeds[default_index]),
        "seed_selection": "lowest seen-user validation loss" if losses is not None else "first seed",
        "fewshot": {
            "prior_strength": float(prior_strength),  # "bayes": the multiplier of the fitted prior precision
            # {split mode: {k: setting}}: the setting fitted at each k (pluralign.evaluate.shrinkage),
            # which the reward uses for a new user with that many answers; `mode`: the run's primary split mode
            "prior_strength_by_k": {str(m): {str(k): float(v) for k, v in by_k.items()}
                                    for m, by_k in (prior_strength_by_k or {}).items()},
            # {split mode: {k: bool}}: the gate; a new user with k answers where it is off (or below
            # every k) gets the population's reward. Absent in older artifacts (always personalize).
            "personalize_by_k": None if personalize_by_k is None else {
                str(m): {str(k): bool(v) for k, v in by_k.items()} for m, by_k in personalize_by_k.items()},
            "prior_strength_by_mode": {str(m): float(v) for m, v in (prior_strength_by_mode or {}).items()},  # over all k
            # {split mode: ρ}: the fitted variance ratio of the prior's residual block (base.empirical_prior);
            # absent in older artifacts and 1 for models without one (the prior as the seen states give it)
            "residual_ratio_by_mode": {str(m): float(v) for m, v in (residual_ratio_by_mode or {}).items()},
            "mode": prior_mode,
            "inference": inference,
            "steps": int(inference_steps),
            "learning_rate": float(inference_learning_rate),
        },
        "seen_users": [int(u) for u in np.asarray(seen_users)],
        "data_config": None if data_config is None else _to_json(dataclasses.asdict(data_config)),
        # train.meta (MRM): the model carries a meta-learned initial user state (pluralign.train.meta)
        "meta": None if meta_options is None else _to_json(dataclasses.asdict(meta_options)),
        "dataset": dataset_meta.get("name"),
        "encoder": dataset_meta.get("encoder"),
        "provenance": provenance(),
    }
    # Users table: every row of the state table, with the split it belongs to.
    split_of = np.full(n_users, "unused", dtype=object)
    for name in ("seen", "unseen_val", "unseen_test"):
        rows = (split or {"seen": seen_users}).get(name, [])
        split_of[np.asarray(rows, np.int64)] = name
    ids = dataset_meta.get("user_ids")
    user_id = [str(u) for u in ids] if ids is not None else [str(i) for i in range(n_users)]
    columns = {"row": pa.array(np.arange(n_users, dtype=np.int32)), "user_id": pa.array(user_id, pa.string()),
               "split": pa.array(split_of.tolist(), pa.string())}
    group = dataset_meta.get("truth", {}).get("user_group")
    if group is not None and len(group) == n_users:
        columns["group"] = pa.array(np.asarray(group, np.int32))

    # Payload: a flat leaf list, as the trainer's checkpoints (orbax needs no NNX pytree knowledge).
    payload = {"leaves": [np.asarray(x) for x in jax.tree.leaves(params)]}
    seen_states = np.asarray(seen_states, np.float32)
    if seen_states.size:  # orbax stores no zero-size arrays; S = 0 (BT) has nothing to store
        payload["seen_states"] = seen_states
    with atomic_dir(path, overwrite=True) as tmp:  # a save killed midway leaves the old model in place
        write_json_atomic(tmp / "model.json", record)
        write_json_atomic(tmp / "dataset_meta.json", _to_json(dataset_meta))
        pq.write_table(pa.table(columns), tmp / "users.parquet")
        save_pytree(tmp / "state", payload)
        fault_point("model_written_before_rename")
    return path


def is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` holds a whole artifact (`save_model` renames it into place only when it is)."""
    path = pathlib.Path(path)
    return all((path / name).exists() for name in ("model.json", "dataset_meta.json", "users.parquet", "state"))


@dataclasses.dataclass
class TrainedModel:
    """A loaded artifact: the model of one chosen seed, plus everything needed to use it.

    `model` is the merged NNX module (θ and seen users' states) of seed `seed`;
    `graphdef`/`params` are its functional split, `all_params` the stacked params of every seed.
    """

    path: pathlib.Path
    record: dict
    dataset_meta: dict
    users: dict  # column name -> numpy array (users.parquet)
    graphdef: nnx.GraphDef
    all_params: Any
    all_seen_states: jax.Array  # [n_seeds, n_users, S]
    seed: int

    @property
    def seed_index(self) -> int:
        return self.record["seeds"].index(self.seed)

    @property
    def params(self):
        return jax.tree.map(lambda x: x[self.seed_index], self.all_params)

    @property
    def seen_states(self) -> jax.Array:
        """[n_users, S] the chosen seed's user states (meaningful for rows whose split is "seen")."""
        return self.all_seen_states[self.seed_index]

    @property
    def model(self) -> base.PreferenceModel:
        return nnx.merge(self.graphdef, self.params)

    @property
    def name(self) -> str:
        return self.record["model"]

    @property
    def seen_users(self) -> np.ndarray:
        return np.asarray(self.record["seen_users"], np.int32)

    @property
    def prior_strength(self) -> float:
        return self.record["fewshot"]["prior_strength"]

    def with_seed(self, seed: int) -> TrainedModel:
        if seed not in self.record["seeds"]:
            raise ValueError(f"{self.path}: no seed {seed}; the artifact holds seeds {self.record['seeds']}")
        return dataclasses.replace(self, seed=int(seed))

    def user_row(self, user: Any) -> int:
        """A known user's row in the state table, from its id (as in meta user_ids; an int is an id
        too, never a row number, which would silently be another user where ids are not 0..n-1)."""
        if not isinstance(user, (str, int, np.integer)) or isinstance(user, bool):
            raise InputTypeError(f"user: expected a user id (str or int), a Support, a UserState or an OnlineUser, "
                                 f"got {type(user).__name__}")
        row = self._row_by_id.get(str(user))
        if row is None:
            ids = self.users["user_id"]
            shown = ", ".join(repr(str(u)) for u in ids[:3])
            raise UnknownUserError(f"user {user!r}: not a user id of dataset {self.record['dataset']!r} "
                                   f"(its {len(ids)} ids look like {shown}, ...)")
        if self.users["split"][row] != "seen":
            raise UnknownUserError(
                f"user {user!r} (row {row}) was held out of training ({self.users['split'][row]}); its state was "
                "never learned. Pass its comparisons as pluralign.export.Support to infer it few-shot."
            )
        return row

    @functools.cached_property
    def _row_by_id(self) -> dict:
        return {str(uid): row for row, uid in enumerate(self.users["user_id"])}

    def load_dataset(self, cache_dir: str | os.PathLike | None = None):
        """The run's dataset (regenerated from cache for synthetic data), for its embedding tables."""
        from pluralign.data.sources import GENERATORS, DiskDataConfig, load_dataset

        cfg = self.record.get("data_config")
        if cfg is None:
            raise ValueError(f"{self.path}: the artifact records no data config")
        cls = DiskDataConfig if cfg["kind"] == "disk" else GENERATORS[cfg["kind"]][0]
        return load_dataset(_build_dataclass(cls, cfg), cache_dir)

    def seen_logits(self, tables: base.Tables, batch: base.PairBatch) -> jax.Array:
        """[B] logits of seen users' comparisons (rows of `tables`), as the run scored them."""
        return self._seen_logits(self.params, self.seen_states, tables, batch)

    @functools.cached_property
    def _seen_logits(self):
        graphdef = self.graphdef  # closed over, not a static argument: some configs are unhashable

        @jax.jit
        def seen_logits(params, seen_states, tables, batch):
            model = nnx.merge(graphdef, params)
            return model.pair_logits(seen_states[batch.user], model.pair_features(base.gather(tables, batch)))

        return seen_logits

    def reward(self, **options):
        """A `PersonalizedReward` for this model (see `pluralign.export.reward`)."""
        from pluralign.export.reward import PersonalizedReward

        return PersonalizedReward(self, **options)


def compute_seen_states(graphdef: nnx.GraphDef, params: Any, tables: base.Tables, n_users: int,
                        context: Any = None) -> np.ndarray:
    """[n_seeds, n_users, S]: every user row's state as the run scores seen users
    (`model.seen_states`; `context` the model's `training_context`, read by VPL), one seed at a time."""
    users = jnp.arange(n_users, dtype=jnp.int32)
    one = jax.jit(lambda p: nnx.merge(graphdef, p).seen_states(tables, users, context))
    n_seeds = jax.tree.leaves(params)[0].shape[0]
    return np.stack([np.asarray(one(jax.tree.map(lambda x: x[i], params))) for i in range(n_seeds)])


def read_artifact_json(file: pathlib.Path) -> dict:
    """One JSON object of an artifact; a missing, truncated or non-object file is an `ArtifactError` naming it."""
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{file}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{file}: not valid JSON (truncated or corrupt?): {_first_clause(e)}") from None
    if not isinstance(record, dict):
        raise ArtifactError(f"{file}: expected a JSON object, found {type(record).__name__}")
    return record


def _first_clause(error: BaseException, limit: int = 200) -> str:
    """The start of an error's message, on one line."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load(path: str | os.PathLike, *, seed: int | None = None) -> TrainedModel:
    """Loads an artifact written by `save_model` (a run's `<run_dir>/model`, or the run dir itself)
    onto the default device (CPU or GPU); `seed` picks a trained seed (default: the recorded one)."""
    path = pathlib.Path(path)
    if not (path / "model.json").is_file() and (path / MODEL_DIR / "model.json").is_file():
        path = path / MODEL_DIR
    if not (path / "model.json").is_file():
        raise FileNotFoundError(f"{path}: no model.json; not a pluralign model artifact")
    record = read_artifact_json(path / "model.json")
    missing = [key for key in ("model", "model_config", "dims", "seeds", "default_seed", "fewshot", "seen_users")
               if key not in record]
    if missing:
        raise ArtifactError(f"{path}/model.json: missing {missing}; the file is incomplete or not a pluralign model")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path}/model.json: format_version {record['format_version']} is newer than this pluralign")
    if record["model"] not in REGISTRY:
        raise ArtifactError(f"{path}/model.json: unknown model {record['model']!r}; known models: {sorted(REGISTRY)}")
    cls, config_cls = REGISTRY[record["model"]]
    if record.get("meta") is not None:
        from pluralign.train import meta

        cls = meta.meta_class(cls, meta.MetaOptions(**record["meta"]))
    config = _build_dataclass(config_cls, record["model_config"])
    dims = base.Dims(**record["dims"])
    S = cls.state_dim(config, dims)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(config, dims, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree.flatten(abstract)
    n_seeds = len(record["seeds"])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"leaves": [jax.ShapeDtypeStruct((n_seeds, *x.shape), x.dtype, sharding=device) for x in leaves]}
    if S > 0 and dims.n_users > 0:
        target["seen_states"] = jax.ShapeDtypeStruct((n_seeds, dims.n_users, S), jnp.float32, sharding=device)
    if not (path / "state").is_dir():
        raise ArtifactError(f"{path}/state: missing; the artifact has no parameters")
    try:
        restored = restore_pytree(path / "state", target)
    except (ValueError, KeyError, TypeError, OSError, RuntimeError) as e:
        # orbax/TensorStore messages run to thousands of characters (the whole spec): keep the first clause
        raise ArtifactError(f"{path}/state: cannot be read as the model in model.json describes "
                            f"(corrupt, truncated or another model's): {_first_clause(e)}") from e
    all_params = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in restored["leaves"]])
    try:
        table = pq.read_table(path / "users.parquet")
    except (OSError, pa.ArrowException) as e:
        raise ArtifactError(f"{path}/users.parquet: cannot be read (corrupt or truncated?): {_first_clause(e)}") from e
    if not {"user_id", "split"} <= set(table.column_names) or table.num_rows != dims.n_users:
        raise ArtifactError(f"{path}/users.parquet: expected columns user_id and split for {dims.n_users} users, "
                            f"found {table.column_names} for {table.num_rows}")
    users = {name: np.asarray(table.column(name).to_numpy(zero_copy_only=False)) for name in table.column_names}
    loaded = TrainedModel(
        path=path, record=record, dataset_meta=read_artifact_json(path / "dataset_meta.json"),
        users=users, graphdef=graphdef, all_params=all_params, all_seen_states=jnp.asarray(restored.get("seen_states", np.zeros((n_seeds, dims.n_users, S), np.float32))),
        seed=int(record["default_seed"]),
    )
    return loaded if seed is None else loaded.with_seed(seed)
