"""The on-disk preference dataset (docs/design/data-format.md): read, write and validate.

A dataset is a directory holding frozen embeddings (``items.npy``, optional
``prompts.npy``), the comparisons that refer to them by row
(``comparisons.parquet``), optional per-item attribute ratings
(``attributes.npy``) and ``meta.json``. Every model trains from this one format,
so it is checked strictly: any problem raises :class:`DatasetError` naming the
file, the first offending row and the problem. Checks are vectorised numpy so
that 10M comparisons validate in about a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.atomic import atomic_dir
from pluralign.errors import InputError
from pluralign.jsonio import json_default

FORMAT_VERSION = 1

_INT32 = np.iinfo(np.int32)
_EMBED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_COLUMNS = {"user": np.int32, "prompt": np.int32, "a": np.int32, "b": np.int32,
            "label": np.float32, "weight": np.float32}
_REQUIRED_COLUMNS = ("user", "prompt", "a", "b", "label")


class DatasetError(InputError):
    """An invalid dataset; ``str(e)`` is ``"<file> row <row>: <problem>"``. An `InputError` (so a
    ValueError), so a caller catches every bad input, data or argument, with one class."""

    def __init__(self, file: str, problem: str, row: int | None = None) -> None:
        self.file, self.problem, self.row = file, problem, row
        where = file if row is None else f"{file} row {row}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep it picklable across multiprocessing (sweeps)
        return (DatasetError, (self.file, self.problem, self.row))


def _as_column(name: str, x: Any, dtype: type) -> np.ndarray:
    """Casts one comparison column, refusing silent truncation of indices."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
    if np.dtype(dtype).kind == "i" and x.size:
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer indices, got dtype {x.dtype}")
        if x.min() < _INT32.min or x.max() > _INT32.max:
            raise ValueError(f"{name}: values do not fit in int32")
    return x.astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Comparisons:
    """Columns of ``comparisons.parquet``; ``label`` is P(a ≻ b) for ``user``."""

    user: np.ndarray    # int32 [N]
    prompt: np.ndarray  # int32 [N], -1 = no prompt
    a: np.ndarray       # int32 [N]
    b: np.ndarray       # int32 [N]
    label: np.ndarray   # float32 [N] in [0, 1]
    weight: np.ndarray  # float32 [N]

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, index: np.ndarray) -> Comparisons:
        return Comparisons(**{f: getattr(self, f)[index] for f in _COLUMNS})

    @classmethod
    def from_arrays(cls, user, a, b, label, prompt=None, weight=None) -> Comparisons:
        n = len(np.asarray(user))
        cols = dict(user=user, a=a, b=b, label=label,
                    prompt=np.full(n, -1, np.int32) if prompt is None else prompt,
                    weight=np.ones(n, np.float32) if weight is None else weight)
        cast = {k: _as_column(k, v, _COLUMNS[k]) for k, v in cols.items()}
        lengths = {k: len(v) for k, v in cast.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"comparison columns differ in length: {lengths}")
        return cls(**cast)


@dataclasses.dataclass(frozen=True, eq=False)
class PreferenceDataset:
    """A dataset in memory; ``items`` etc. are memory-mapped when read with mmap."""

    items: np.ndarray               # [n_items, D] float16 | float32
    comparisons: Comparisons
    meta: dict
    prompts: np.ndarray | None = None     # [n_prompts, D]
    attributes: np.ndarray | None = None  # [n_items, m] float32, NaN = missing
    path: pathlib.Path | None = None

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def dim(self) -> int:
        return int(self.items.shape[1])

    @property
    def n_prompts(self) -> int:
        return 0 if self.prompts is None else int(self.prompts.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.meta["n_users"])

    @property
    def name(self) -> str:
        # In-memory datasets may not be named yet; write_dataset names them after the dir.
        return str(self.meta.get("name", self.path.name if self.path else ""))


# ----------------------------------------------------------------- validation

def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _first_bad_row(array: np.ndarray, bad_row) -> int | None:
    """First row where ``bad_row(block) -> bool[rows]`` holds, read in chunks so a
    memory-mapped table is never materialised whole."""
    rows_per_chunk = max(1, (1 << 24) // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, array.shape[0], rows_per_chunk):
        bad = bad_row(np.asarray(array[start:start + rows_per_chunk]))
        if bad.any():
            return start + int(bad.argmax())
    return None


def _check_table(file: str, x: Any, check_values: bool) -> tuple[int, int]:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise DatasetError(file, f"expected a 2-D array [n, D], got shape {np.shape(x)}")
    if x.dtype not in _EMBED_DTYPES:
        raise DatasetError(file, f"dtype {x.dtype}, expected float16 or float32")
    if check_values:
        row = _first_bad_row(x, lambda blk: ~np.isfinite(blk).all(axis=1))
        if row is not None:
            raise DatasetError(file, "contains NaN/inf", row)
    return x.shape[0], x.shape[1]


def _check_meta(meta: Any, on_disk: bool) -> None:
    # In-memory datasets (e.g. from a generator) get format_version and name on write.
    if not isinstance(meta, dict):
        raise DatasetError("meta.json", f"expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version", None if on_disk else FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise DatasetError("meta.json", f"missing or invalid format_version: {version!r}")
    if version > FORMAT_VERSION:
        raise DatasetError("meta.json", f"format_version {version} is newer than this "
                           f"pluralign reads ({FORMAT_VERSION}); upgrade pluralign")
    if (on_disk or "name" in meta) and not isinstance(meta.get("name"), str):
        raise DatasetError("meta.json", f"missing or invalid name: {meta.get('name')!r}")
    n_users = meta.get("n_users")
    if not _is_int(n_users) or n_users < 0:
        raise DatasetError("meta.json", f"missing or invalid n_users: {n_users!r}")
    if "encoder" in meta and not isinstance(meta["encoder"], dict):
        raise DatasetError("meta.json", "encoder must be an object")
    _check_truth(meta.get("truth"), n_users)


# Ceilings a run reports next to its accuracies: a probability, or null where unknown.
_TRUTH_ACCURACIES = ("bayes_optimal_accuracy", "population_optimal_accuracy")


def _check_truth(truth: Any, n_users: int) -> None:
    """The parts of meta["truth"] that a run reads: checked at load, not found wrong after training."""
    if truth is None:
        return
    if not isinstance(truth, dict):
        raise DatasetError("meta.json", f"truth must be an object, got {type(truth).__name__}")
    for key in _TRUTH_ACCURACIES:
        value = truth.get(key)
        if value is not None and not (isinstance(value, (int, float, np.integer, np.floating))
                                      and not isinstance(value, bool) and 0 <= value <= 1):
            raise DatasetError("meta.json", f"truth.{key} must be a number in [0, 1] or null, got {value!r}")
    group = truth.get("user_group")
    if group is not None:
        groups = np.asarray(group) if isinstance(group, (list, tuple, np.ndarray)) else None
        if groups is None or groups.ndim != 1 or len(groups) != n_users:
            found = f"shape {groups.shape}" if groups is not None else repr(group)
            raise DatasetError("meta.json", f"truth.user_group has {found}, expected a list of n_users = {n_users}")
        bad = np.ones(len(groups), bool) if groups.dtype.kind not in "iu" else groups < 0
        if bad.any():
            i = int(bad.argmax())
            raise DatasetError("meta.json", f"truth.user_group[{i}] = {group[i]!r} is not a group number >= 0")


def _check_meta_lengths(meta: dict, n_items: int, dim: int, n_attributes: int | None) -> None:
    expected = {"user_ids": meta["n_users"], "item_ids": n_items, "attribute_names": n_attributes}
    for key, n in expected.items():
        if meta.get(key) is None:  # absent, or null as many writers say "absent"
            continue
        if n is None:
            raise DatasetError("meta.json", f"{key} given but there is no attributes.npy")
        if not isinstance(meta[key], (list, tuple)) or len(meta[key]) != n:
            found = len(meta[key]) if isinstance(meta[key], (list, tuple)) else repr(meta[key])
            raise DatasetError("meta.json", f"{key} has length {found}, expected {n}")
    enc_dim = meta.get("encoder", {}).get("dim")
    if enc_dim is not None and enc_dim != dim:
        raise DatasetError("meta.json", f"encoder.dim {enc_dim} != items.npy dim {dim}")


def _check_comparisons(c: Comparisons, n_users: int, n_items: int, n_prompts: int) -> None:
    file = "comparisons.parquet"
    n = len(c)
    for col, dtype in _COLUMNS.items():
        x = getattr(c, col)
        if not isinstance(x, np.ndarray) or x.ndim != 1 or len(x) != n:
            raise DatasetError(file, f"column '{col}' must be a 1-D array of length {n}")
        if x.dtype != np.dtype(dtype):
            raise DatasetError(file, f"column '{col}' has dtype {x.dtype}, expected "
                               f"{np.dtype(dtype).name}")
    prompt_range = (f"outside [-1, n_prompts={n_prompts})" if n_prompts
                    else "but the dataset has no prompts.npy")
    u, a, b, prompt, label, weight = c.user, c.a, c.b, c.prompt, c.label, c.weight
    # (bad-row mask, problem at that row); the earliest bad row over all checks wins.
    checks = [
        ((u < 0) | (u >= n_users), lambda i: f"user {u[i]} outside [0, n_users={n_users})"),
        ((a < 0) | (a >= n_items), lambda i: f"a = {a[i]} outside [0, n_items={n_items})"),
        ((b < 0) | (b >= n_items), lambda i: f"b = {b[i]} outside [0, n_items={n_items})"),
        ((prompt < -1) | (prompt >= n_prompts), lambda i: f"prompt {prompt[i]} {prompt_range}"),
        (~((label >= 0) & (label <= 1)), lambda i: f"label {label[i]} is NaN or outside [0, 1]"),
        (~(np.isfinite(weight) & (weight >= 0)), lambda i: f"weight {weight[i]} is not finite ≥ 0"),
        (a == b, lambda i: f"a == b (item {a[i]})"),
    ]
    first = [(int(mask.argmax()), problem) for mask, problem in checks if mask.any()]
    if first:
        row, problem = min(first, key=lambda t: t[0])
        raise DatasetError(file, problem(row), row)
    if n_users > n:  # some user has no comparison; found without an array of n_users (may be ~1e9)
        present = np.unique(c.user)
        gaps = np.flatnonzero(present != np.arange(len(present)))
        missing = int(gaps[0]) if len(gaps) else len(present)
    else:
        counts = np.bincount(c.user, minlength=n_users)
        missing = int((counts == 0).argmax()) if n_users and (counts == 0).any() else None
    if missing is not None:
        raise DatasetError("meta.json", f"user {missing} has no comparisons (n_users = {n_users}, "
                           f"{n} comparisons): users must be numbered 0 .. n_users-1 without gaps; the "
                           "importers (pluralign.data.importers) map ids of any kind to such numbers")


def validate_dataset(ds: PreferenceDataset, *, check_embeddings: bool = True) -> None:
    """Raises :class:`DatasetError` for the first problem found.

    ``check_embeddings=False`` skips the NaN/inf scan of items/prompts, the only
    check whose cost grows with n_items × D.
    """
    _check_meta(ds.meta, on_disk=ds.path is not None)
    n_items, dim = _check_table("items.npy", ds.items, check_embeddings)
    n_prompts = 0
    if ds.prompts is not None:
        n_prompts, prompt_dim = _check_table("prompts.npy", ds.prompts, check_embeddings)
        if prompt_dim != dim:
            raise DatasetError("prompts.npy", f"dim {prompt_dim} != items.npy dim {dim}")
    n_attributes = None
    if ds.attributes is not None:
        att = ds.attributes
        if not isinstance(att, np.ndarray) or att.ndim != 2 or att.shape[0] != n_items:
            raise DatasetError("attributes.npy", f"expected shape [n_items={n_items}, m], "
                               f"got {np.shape(att)}")
        if att.dtype != np.float32:
            raise DatasetError("attributes.npy", f"dtype {att.dtype}, expected float32")
        row = _first_bad_row(att, lambda blk: np.isinf(blk).any(axis=1))
        if row is not None:
            raise DatasetError("attributes.npy", "contains inf (use NaN for missing)", row)
        n_attributes = att.shape[1]
    _check_meta_lengths(ds.meta, n_items, dim, n_attributes)
    _check_comparisons(ds.comparisons, ds.meta["n_users"], n_items, n_prompts)


# ----------------------------------------------------------------- reading

def _load_npy(root: pathlib.Path, file: str, mmap: bool, required: bool) -> np.ndarray | None:
    if not (root / file).is_file():
        if required:
            raise DatasetError(file, f"required file missing from {root}")
        return None
    try:
        return np.load(root / file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DatasetError(file, f"cannot load: {e}") from e


def _read_comparisons(file_path: pathlib.Path) -> Comparisons:
    file = file_path.name
    if not file_path.is_file():
        raise DatasetError(file, f"required file missing from {file_path.parent}")
    try:
        table = pq.read_table(file_path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(file, f"cannot read: {e}") from e
    unknown = sorted(set(table.column_names) - set(_COLUMNS))
    if unknown:  # most likely a misspelt 'weight', which would otherwise be ignored
        raise DatasetError(file, f"unexpected column(s) {unknown}; known: {list(_COLUMNS)}")
    cols = {}
    for name, dtype in _COLUMNS.items():
        if name not in table.column_names:
            if name in _REQUIRED_COLUMNS:
                raise DatasetError(file, f"missing column '{name}'")
            continue
        column = table.column(name)
        expected = pa.from_numpy_dtype(dtype)
        if column.type != expected:
            raise DatasetError(file, f"column '{name}' has type {column.type}, expected {expected}")
        if column.null_count:
            row = int(np.asarray(column.is_null().to_numpy(zero_copy_only=False)).argmax())
            raise DatasetError(file, f"column '{name}' is null", row)
        cols[name] = column.to_numpy()
    return Comparisons.from_arrays(**cols)


def read_dataset(path: str | os.PathLike, *, mmap: bool = True, validate: bool = True
                 ) -> PreferenceDataset:
    """Reads (and by default fully validates) the dataset directory at ``path``."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DatasetError(str(root), "no such dataset directory")
    if not (root / "meta.json").is_file():
        raise DatasetError("meta.json", f"required file missing from {root}")
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError("meta.json", f"malformed JSON: {e}") from e
    # Before anything else: a newer format may lay its files out differently.
    _check_meta(meta, on_disk=True)
    ds = PreferenceDataset(
        items=_load_npy(root, "items.npy", mmap, required=True),
        comparisons=_read_comparisons(root / "comparisons.parquet"),
        meta=meta,
        prompts=_load_npy(root, "prompts.npy", mmap, required=False),
        attributes=_load_npy(root, "attributes.npy", mmap, required=False),
        path=root,
    )
    if validate:
        validate_dataset(ds)
    return ds


def content_fingerprint(path: str | os.PathLike) -> str:
    """A hash of a dataset directory's content that is cheap to take at any size: meta.json and
    comparisons.parquet in full, and of each array file its size and first and last MiB.
    A run records it, so that resuming or re-running on changed data is noticed."""
    root = pathlib.Path(path)
    digest = hashlib.sha256()
    for name in ("meta.json", "comparisons.parquet", "items.npy", "prompts.npy", "attributes.npy"):
        file = root / name
        if not file.is_file():
            digest.update(f"{name}: absent\n".encode())
            continue
        size = file.stat().st_size
        digest.update(f"{name}: {size}\n".encode())
        with file.open("rb") as f:
            if name.endswith(".npy") and size > 2 * _SAMPLE:
                digest.update(f.read(_SAMPLE))
                f.seek(size - _SAMPLE)
                digest.update(f.read(_SAMPLE))
            else:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:32]


_SAMPLE = 1 << 20


# ----------------------------------------------------------------- writing

def _write_files(tmp: pathlib.Path, ds: PreferenceDataset, meta_text: str) -> None:
    np.save(tmp / "items.npy", np.ascontiguousarray(ds.items))
    if ds.prompts is not None:
        np.save(tmp / "prompts.npy", np.ascontiguousarray(ds.prompts))
    if ds.attributes is not None:
        np.save(tmp / "attributes.npy", np.ascontiguousarray(ds.attributes))
    c = ds.comparisons
    names = [n for n in _COLUMNS if n != "weight" or not np.all(c.weight == 1)]
    schema = pa.schema([(n, pa.from_numpy_dtype(_COLUMNS[n])) for n in names])
    table = pa.table({n: getattr(c, n) for n in names}, schema=schema)
    pq.write_table(table, tmp / "comparisons.parquet")
    (tmp / "meta.json").write_text(meta_text)


def write_dataset(path: str | os.PathLike, items: np.ndarray, comparisons: Comparisons, *,
                  meta: dict | None = None, prompts: np.ndarray | None = None,
                  attributes: np.ndarray | None = None, overwrite: bool = False
                  ) -> pathlib.Path:
    """Validates, then atomically writes a dataset directory; returns its path.

    ``meta`` gets ``format_version``, and defaults for ``name`` (the directory
    name) and ``n_users`` (max user + 1); other keys are kept as given.
    """
    root = pathlib.Path(path).absolute()
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists (pass overwrite=True to replace it)")
    full_meta = dict(meta or {})
    full_meta["format_version"] = FORMAT_VERSION
    full_meta.setdefault("name", root.name)
    if "n_users" not in full_meta:
        full_meta["n_users"] = int(comparisons.user.max()) + 1 if len(comparisons) else 0
    try:
        meta_text = json.dumps(full_meta, indent=2, default=json_default)
    except (TypeError, ValueError) as e:
        raise DatasetError("meta.json", f"not JSON-serialisable: {e}") from e
    full_meta = json.loads(meta_text)  # validate exactly what a reader will see
    ds = PreferenceDataset(items=np.asarray(items), comparisons=comparisons, meta=full_meta,
                           prompts=None if prompts is None else np.asarray(prompts),
                           attributes=None if attributes is None else np.asarray(attributes))
    validate_dataset(ds)

    with atomic_dir(root, overwrite=overwrite) as tmp:
        _write_files(tmp, ds, meta_text)
    return root
