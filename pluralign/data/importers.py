"""Import your own preference data: a comparisons table or a ratings table -> a dataset.

Two table shapes cover most real preference data (CSV, JSONL or Parquet, read with
pyarrow; or a ``pyarrow.Table`` already in memory):

* **comparisons** — one row per judgement: a user, an optional prompt, two responses
  ``a`` and ``b`` and a label P(a ≻ b) (no label column = ``a`` is the chosen one).
* **ratings** — one row per ``(user, item, rating[, prompt])``; within each user (and
  prompt, when given) every pair of rated items becomes a comparison whose label is 1
  for the higher-rated item; ties are dropped or kept with label 0.5 (``ties=``).

Items (and prompts) are either **texts**, embedded once per distinct text with a frozen
encoder (`pluralign.embed.load_encoder`, default the offline ``wordllama``), or **ids**
into a feature matrix the caller already computed (``items=`` array or ``.npy`` path,
``item_ids=`` the id of each row; without it the ids are the row numbers).

User ids of any type are mapped to contiguous ints in sorted order; the map is
``meta["user_ids"]`` (docs/design/data-format.md). Everything is vectorised (pyarrow compute + numpy):
100k ratings from 1,000 users import in well under a second plus encoding
(``scripts/bench_import.py``). Bad input raises :class:`DatasetError` naming the file,
the 0-based data row (header not counted) and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pluralign.data.format import Comparisons, DatasetError, PreferenceDataset
from pluralign.embed import load_encoder

TableLike = str | os.PathLike | pa.Table


# ----------------------------------------------------------------- reading tables

def read_table(path: str | os.PathLike, text_columns: Sequence[str] = ()) -> pa.Table:
    """Reads a CSV, JSONL (.jsonl/.json, optionally .gz) or Parquet file with pyarrow.

    ``text_columns`` (ids and texts) are read from a CSV as written, never as numbers: "007"
    and "7" stay two different users, and an id above int64 is not rounded to a float."""
    path = pathlib.Path(path)
    file = path.name
    if not path.is_file():
        raise DatasetError(file, f"no such file: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    kind = suffixes[-2] if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst") and len(suffixes) > 1 else (
        suffixes[-1] if suffixes else "")
    try:
        if kind == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path)
        if kind in (".jsonl", ".json", ".ndjson"):
            import pyarrow.json as pj
            return pj.read_json(path)
        if kind in (".csv", ".tsv"):
            import pyarrow.csv as pcsv
            parse = pcsv.ParseOptions(delimiter="\t" if kind == ".tsv" else ",")
            # As bytes: their UTF-8 is checked by `_column`, which can name the row.
            convert = pcsv.ConvertOptions(column_types={name: pa.binary() for name in text_columns})
            return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
    except UnicodeDecodeError as e:  # pyarrow's JSON reader can raise it for non-UTF-8 bytes
        raise DatasetError(file, f"not valid UTF-8 text ({e.reason})", _first_undecodable_line(path)) from e
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(file, f"cannot read: {e}") from e
    raise DatasetError(file, f"unknown table format {kind!r}: use .csv, .tsv, .jsonl or .parquet")


def _first_undecodable_line(path: pathlib.Path) -> int | None:
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        for row, line in enumerate(f):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return row
    return None


def _as_table(source: TableLike, text_columns: Sequence[str | None] = ()) -> tuple[pa.Table, str]:
    if isinstance(source, pa.Table):
        return source, "<table>"
    return read_table(source, [c for c in text_columns if c is not None]), pathlib.Path(source).name


# Columns holding ids or texts: compared as exact values, so never as floating-point numbers.
_ID_ROLES = ("user", "a", "b", "prompt", "item", "group")


def _column(table: pa.Table, file: str, name: str, role: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DatasetError(file, f"missing {role} column '{name}' (columns: {table.column_names}); "
                           f"name the right one with {role}=...")
    col = table.column(name)
    if col.null_count:
        raise DatasetError(file, f"column '{name}' is null", _first_true(col.is_null()))
    if role in _TEXT_ROLES and is_conversation_type(col.type):
        col = conversation_texts(col, file, name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:  # pyarrow's JSON reader lets invalid UTF-8 into string columns
            col.validate(full=True)
        except pa.ArrowInvalid:
            col = _decode_utf8(pc.cast(col, pa.large_binary()), file, name)
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        col = _decode_utf8(col, file, name)
    if role in _ID_ROLES and pa.types.is_dictionary(col.type):  # e.g. a pandas categorical
        col = pc.cast(col, col.type.value_type)
    if role in _ID_ROLES and pa.types.is_floating(col.type):
        raise DatasetError(file, f"column '{name}' holds floating-point numbers ({col.type}), which cannot be exact "
                           "ids (an id above 2^63 or a decimal); write the ids as strings (quoted, in JSON)")
    if role in _ID_ROLES and not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)
                                  or pa.types.is_large_string(col.type)):
        raise DatasetError(file, f"column '{name}' holds {col.type}; {role} ids must be integers or strings")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        empty = pc.equal(pc.utf8_length(col), 0)
        if pc.any(empty).as_py():
            raise DatasetError(file, f"column '{name}' is empty", _first_true(empty))
    return col


# Columns that may hold texts, and so conversations: TRL's conversational format, where a prompt
# or a response is a list of {"role", "content"} messages.
_TEXT_ROLES = ("a", "b", "prompt", "item")


def is_conversation_type(t: pa.DataType) -> bool:
    """Whether a column type is a list of chat messages (structs with a `content` field)."""
    return ((pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type)
            and t.value_type.get_field_index("content") >= 0)


def message_text(message: Any) -> str:
    """The text of one chat message: its `content`, a str or a list of parts whose text parts are
    kept (images and other parts dropped); a message given as a bare str is its own text."""
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(p if isinstance(p, str) else str(p.get("text") or "") for p in content
                       if isinstance(p, str) or isinstance(p, dict) and p.get("type", "text") == "text")
    raise ValueError(f"message {message!r:.80} has no text content")


def conversation_text(messages: Sequence[Any], separator: str = "\n\n") -> str:
    """One conversation as one text: its messages' texts (`message_text`) joined by `separator`, a
    blank line by default, roles dropped (a one-message conversation is exactly its text). The RLHF
    adapters score conversations with this function too (`integrations._common.as_text`)."""
    return separator.join(message_text(m) for m in messages)


def conversation_texts(col: pa.ChunkedArray, file: str, name: str) -> pa.ChunkedArray:
    """A column of conversations (lists of {role, content} messages) -> a column of texts."""
    texts = []
    for row, messages in enumerate(col.to_pylist()):
        try:
            texts.append(conversation_text(messages))
        except ValueError as e:
            raise DatasetError(file, f"column '{name}': {e}", row) from None
    return pa.chunked_array([pa.array(texts, pa.string())])


def _decode_utf8(col: pa.ChunkedArray, file: str, name: str) -> pa.ChunkedArray:
    try:
        return pc.cast(col, pa.string())
    except pa.ArrowInvalid:
        for row, value in enumerate(col.to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(file, f"column '{name}' is not valid UTF-8 text ({e.reason} at byte {e.start}: "
                                   f"{value[max(0, e.start - 20):e.start + 1]!r})", row) from None
        raise


def _first_true(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> int:
    m = mask.to_numpy(zero_copy_only=False) if hasattr(mask, "to_numpy") else mask
    return int(np.asarray(m, dtype=bool).argmax())


def _to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    return col.to_numpy() if col.num_chunks <= 1 else pa.concat_arrays(col.chunks).to_numpy(zero_copy_only=False)


def _to_str(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else pc.cast(col, pa.string())


def _factorize(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Sorted distinct values and each row's index into them (int64 [n])."""
    values = pc.unique(col)
    values = values.take(pc.array_sort_indices(values))
    index = pc.index_in(col, value_set=values)
    return _to_numpy(index if isinstance(index, pa.ChunkedArray) else pa.chunked_array([index])).astype(np.int64), values.to_pylist()


def map_user_ids(table: pa.Table, file: str, column: str) -> tuple[np.ndarray, list]:
    """Contiguous int32 users (sorted order of the original ids) and the id list."""
    index, ids = _factorize(_column(table, file, column, "user"))
    return index.astype(np.int32), ids


# ----------------------------------------------------------------- items: texts or ids

def _load_matrix(x: Any, file: str) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        try:
            x = np.load(x, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(pathlib.Path(x).name, f"cannot load feature matrix: {e}") from e
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype not in (np.float16, np.float32, np.float64):
        raise DatasetError(file, f"feature matrix must be float [n, D], got {x.dtype} {x.shape}")
    return x if x.dtype != np.float64 else x.astype(np.float32)


def _lookup_ids(cols: Sequence[tuple[str, pa.ChunkedArray]], ids: Sequence | None, n: int,
                file: str, what: str) -> list[np.ndarray]:
    """Row of the feature matrix for each id in each column; unknown ids -> DatasetError."""
    out = []
    if ids is not None:
        if len(ids) != n:
            raise ValueError(f"{what}_ids has {len(ids)} entries but the {what} matrix has {n} rows")
        value_set = pa.array(list(ids))
        if pc.count_distinct(value_set).as_py() != n:
            raise ValueError(f"{what}_ids are not unique")
    for name, col in cols:
        if ids is None:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                col = _parse_row_numbers(col, file, name)
            if not pa.types.is_integer(col.type):
                raise DatasetError(file, f"column '{name}' holds {col.type}, not integer row numbers "
                                   f"into the {what} matrix; pass {what}_ids= to map other ids")
            rows = _to_numpy(col).astype(np.int64)
            bad = (rows < 0) | (rows >= n)
        else:
            if pa.types.is_integer(col.type) and pa.types.is_integer(value_set.type):
                col = pc.cast(col, value_set.type)
            same = col.type == value_set.type
            index = pc.index_in(col if same else _to_str(col),
                                value_set=value_set if same else _to_str(value_set))
            bad = _to_numpy(pc.is_null(index))
            rows = _to_numpy(pc.fill_null(index, -1)).astype(np.int64)
        if bad.any():
            row = int(bad.argmax())
            raise DatasetError(file, f"unknown {what} id {col[row].as_py()!r} in column '{name}' "
                               f"(the {what} matrix has {n} rows)", row)
        out.append(rows)
    return out


def _parse_row_numbers(col: pa.ChunkedArray, file: str, name: str) -> pa.ChunkedArray:
    """Row numbers written as text (a CSV read as written) -> int64; a non-number names its row."""
    digits = pc.match_substring_regex(col, r"^\s*[+-]?[0-9]{1,18}\s*$")
    if not pc.all(digits).as_py():
        row = _first_true(pc.invert(digits))
        raise DatasetError(file, f"column '{name}' value {col[row].as_py()!r} is not an integer row number "
                           "into the item matrix; pass item_ids= to map other ids", row)
    return pc.cast(pc.utf8_trim_whitespace(col), pa.int64())


def embed_distinct(cols: Sequence[pa.ChunkedArray], encoder: Any) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """Embeds each distinct text of ``cols`` once; returns table, row index per column, encoder info."""
    joined = pa.chunked_array([c for col in cols for c in _to_str(col).chunks], type=pa.string())
    values = pc.unique(joined)
    enc = load_encoder(encoder)
    table = enc.encode(values.to_pylist())
    indices = [_to_numpy(pc.index_in(_to_str(col), value_set=values)).astype(np.int64) for col in cols]
    return table.astype(np.float32, copy=False), indices, enc.describe()


def embed_pairs(prompt: pa.ChunkedArray, cols: Sequence[pa.ChunkedArray], encoder: Any
                 ) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """Items as (prompt, response) conversations, each distinct pair embedded once.

    A pair is keyed by the indices of its prompt and its response among the distinct texts,
    not by joining the texts with a separator: any character, NUL included, may be in a text."""
    prompt_values, prompt_index = _distinct([prompt])
    response_values, response_index = _distinct(cols)
    keys = [prompt_index[0] * len(response_values) + r for r in response_index]  # int64 [n] per column
    distinct, first, inverse = np.unique(np.concatenate(keys), return_index=True, return_inverse=True)
    order = np.argsort(first)  # items in order of first occurrence, as for texts alone
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    distinct, inverse = distinct[order], rank[inverse.reshape(-1)]
    texts = [(prompt_values[k // len(response_values)], response_values[k % len(response_values)]) for k in distinct]
    enc = load_encoder(encoder)
    table = enc.encode(texts)
    indices = np.split(inverse.astype(np.int64), np.cumsum([len(k) for k in keys])[:-1])
    return table.astype(np.float32, copy=False), indices, enc.describe()


def _distinct(cols: Sequence[pa.ChunkedArray]) -> tuple[list[str], list[np.ndarray]]:
    """The distinct texts of ``cols`` and each column's row index into them."""
    joined = pa.chunked_array([c for col in cols for c in _to_str(col).chunks], type=pa.string())
    values = pc.unique(joined)
    return values.to_pylist(), [_to_numpy(pc.index_in(_to_str(col), value_set=values)).astype(np.int64) for col in cols]


def _resolve(table: pa.Table, file: str, cols: Sequence[tuple[str, str]], *, matrix, ids, encoder,
             what: str, with_prompt: pa.ChunkedArray | None = None):
    """(table [n, D], row indices per column, encoder description or None)."""
    arrays = [(name, _column(table, file, name, role)) for name, role in cols]
    if matrix is not None:
        m = _load_matrix(matrix, f"{what}s")
        return m, _lookup_ids(arrays, ids, m.shape[0], file, what), None
    if with_prompt is not None:
        return embed_pairs(with_prompt, [c for _, c in arrays], encoder)
    return embed_distinct([c for _, c in arrays], encoder)


def _resolve_prompts(table: pa.Table, file: str, prompt: str | None, *, items, prompts, prompt_ids, encoder,
                     item_table: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(prompt table, prompt row per table row), or (None, None) without a ``prompt`` column."""
    if prompt is None:
        return None, None
    if items is not None and prompts is None:
        raise ValueError("with items= given as a feature matrix, prompts must be too (prompts=, prompt_ids=), "
                         "or set prompt=None")
    prompt_table, (prompt_rows,), _ = _resolve(table, file, [(prompt, "prompt")], matrix=prompts, ids=prompt_ids,
                                               encoder=encoder, what="prompt")
    if prompt_table.shape[1] != item_table.shape[1]:
        raise ValueError(f"prompt dim {prompt_table.shape[1]} != item dim {item_table.shape[1]}")
    return prompt_table, prompt_rows


def _build_encoder(encoder: Any, needed: bool) -> Any:
    """Builds the encoder once (a transformers model is slow to load) when texts need it."""
    if not needed:
        return encoder
    return load_encoder(encoder)


def _meta(name: str | None, file: str, user_ids: list, encoder_info: dict | None, kind: str,
          extra: dict) -> dict:
    meta = {"name": name or pathlib.Path(file).stem.split(".")[0] or kind, "n_users": len(user_ids),
            "source": f"pluralign.data.importers.{kind}({file})", "user_ids": user_ids, **extra}
    if encoder_info is not None:
        meta["encoder"] = encoder_info
    return meta


# ----------------------------------------------------------------- comparisons table

def import_comparisons(source: TableLike, *, user: str = "user", a: str = "a", b: str = "b",
                       label: str | None = "label", prompt: str | None = None, weight: str | None = None,
                       label_format: str = "auto", items: Any = None, item_ids: Sequence | None = None,
                       prompts: Any = None, prompt_ids: Sequence | None = None,
                       encoder: Any = "wordllama", embed_with_prompt: bool = False,
                       name: str | None = None) -> PreferenceDataset:
    """A comparisons table -> an in-memory dataset (write it with `write_dataset`).

    ``a``/``b`` hold response texts (embedded with ``encoder``), or ids into ``items``
    when a feature matrix is given. ``label`` is P(a ≻ b) in [0, 1] (booleans work);
    ``label=None`` means ``a`` was chosen in every row (a chosen/rejected layout).
    ``label_format``: ``probability`` (numbers in [0, 1]; 0/1 integers are read this way, 1 =
    ``a`` preferred), ``winner`` (which one won: the strings "a"/"b" in any case, "tie"/"draw"
    = 0.5; integers are then the winner's index, 0 = ``a``, 1 = ``b``), or ``auto`` (the
    default: a string column is ``winner``, a numeric or boolean one ``probability``).
    ``prompt`` (optional) holds prompt texts, or ids into ``prompts``;
    ``embed_with_prompt=True`` embeds each response together with its prompt as one
    conversation (prompt-conditioned items) instead of the response alone.
    """
    table, file = _as_table(source, [user, a, b, prompt])
    if table.num_rows == 0:
        raise DatasetError(file, "no rows")
    users, user_ids = map_user_ids(table, file, user)

    prompt_col = _column(table, file, prompt, "prompt") if prompt is not None else None
    encoder = _build_encoder(encoder, items is None or (prompt is not None and prompts is None))
    if embed_with_prompt and (prompt_col is None or items is not None):
        raise ValueError("embed_with_prompt=True needs a prompt column of texts and no items= matrix")
    item_table, (ia, ib), enc_info = _resolve(
        table, file, [(a, "a"), (b, "b")], matrix=items, ids=item_ids, encoder=encoder, what="item",
        with_prompt=prompt_col if embed_with_prompt else None)
    same = ia == ib
    if same.any():
        row = int(same.argmax())
        raise DatasetError(file, f"'{a}' and '{b}' are the same item ({table.column(a)[row].as_py()!r:.60})", row)

    prompt_table, prompt_rows = _resolve_prompts(table, file, prompt, items=items, prompts=prompts,
                                                 prompt_ids=prompt_ids, encoder=encoder, item_table=item_table)

    if label is None:
        labels = np.ones(table.num_rows, np.float32)
    else:
        col = _column(table, file, label, "label")
        if label_format not in ("auto", "probability", "winner"):
            raise ValueError(f"label_format must be auto, probability or winner, got {label_format!r}")
        textual = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        if label_format == "winner" or (label_format == "auto" and textual):
            labels = winner_labels(col, file, label)
        elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            raise DatasetError(file, f"label column '{label}' has type {col.type}; expected P(a ≻ b) as a number "
                                     "(or label_format=winner for a column naming the winner)")
        else:
            labels = _to_numpy(pc.cast(col, pa.float32())).astype(np.float32)
        bad = ~((labels >= 0) & (labels <= 1))
        if bad.any():
            row = int(bad.argmax())
            raise DatasetError(file, f"label {labels[row]} is NaN or outside [0, 1]", row)
    weights = None
    if weight is not None:
        weights = _to_numpy(pc.cast(_column(table, file, weight, "weight"), pa.float32())).astype(np.float32)
        bad = ~(np.isfinite(weights) & (weights >= 0))
        if bad.any():
            row = int(bad.argmax())
            raise DatasetError(file, f"weight {weights[row]} is not finite ≥ 0", row)

    comparisons = Comparisons.from_arrays(user=users, a=ia.astype(np.int32), b=ib.astype(np.int32), label=labels,
                                          prompt=None if prompt_rows is None else prompt_rows.astype(np.int32),
                                          weight=weights)
    extra = {"columns": {"user": user, "a": a, "b": b, "label": label, "prompt": prompt, "weight": weight},
             "embed_with_prompt": embed_with_prompt}  # how a reward embeds response texts (export.reward)
    if items is not None and item_ids is not None:
        extra["item_ids"] = list(item_ids)
    return PreferenceDataset(items=item_table, comparisons=comparisons, prompts=prompt_table,
                             meta=_meta(name, file, user_ids, enc_info, "import_comparisons", extra))


def winner_labels(col, file, label: str) -> np.ndarray:
    """A winner column -> P(a ≻ b): "a"/"b" (any case, spaces ignored) -> 1/0, "tie"/"draw" -> 0.5;
    integers are the winner's index (0 = a, 1 = b). Anything else is a DatasetError naming the row."""
    if pa.types.is_integer(col.type):
        index = _to_numpy(pc.cast(col, pa.int64()))
        bad = ~np.isin(index, (0, 1))
        if bad.any():
            row = int(bad.argmax())
            raise DatasetError(file, f"winner '{label}' is {index[row]}; expected the winner's index 0 (a) or 1 (b)", row)
        return (index == 0).astype(np.float32)
    values = [None if v is None else str(v).strip().lower() for v in col.to_pylist()]
    mapping = {"a": 1.0, "b": 0.0, "tie": 0.5, "draw": 0.5}
    for row, v in enumerate(values):
        if v not in mapping:
            raise DatasetError(file, f"winner '{label}' is {col[row].as_py()!r}; expected 'a', 'b' (any case) or 'tie'", row)
    return np.asarray([mapping[v] for v in values], np.float32)


# ----------------------------------------------------------------- ratings table

def within_group_pairs(group: np.ndarray, max_pairs_per_group: int | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of rows (i, j) that share a group (i before j in the sorted order).

    Vectorised: rows sorted by group; row r at position p of a group of size n pairs
    with the n − 1 − p rows after it, so the pairs are a repeat + an offset counter.
    ``max_pairs_per_group`` keeps a uniformly random subset per group.
    """
    group = np.asarray(group)
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    size_of_row = np.repeat(sizes, sizes)
    pos = np.arange(len(g)) - np.repeat(starts, sizes)
    later = size_of_row - 1 - pos                      # partners after each row
    first = np.repeat(np.arange(len(g)), later)        # [n_pairs] position in sorted order
    # offset of each pair within its row's block: 1 .. later[r]
    block_start = np.repeat(np.cumsum(later) - later, later)
    second = first + 1 + (np.arange(len(first)) - block_start)
    if max_pairs_per_group is not None and len(first):
        pair_group = g[first]  # sorted: pairs come out grouped
        new_group = np.r_[True, pair_group[1:] != pair_group[:-1]]
        dense = np.cumsum(new_group) - 1
        rng = np.random.default_rng(seed)
        shuffled = np.argsort(dense + rng.random(len(first)))  # random order within each group
        gstart = np.flatnonzero(new_group)
        pg = pair_group[shuffled]
        rank = np.arange(len(pg)) - np.repeat(gstart, np.diff(np.r_[gstart, len(pg)]))
        keep = np.sort(shuffled[rank < max_pairs_per_group])
        first, second = first[keep], second[keep]
    return order[first], order[second]


def ratings_to_comparisons(user: np.ndarray, item: np.ndarray, rating: np.ndarray, *,
                           group: np.ndarray | None = None, ties: str = "drop",
                           max_pairs_per_user: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Within-user (and within-``group``, e.g. prompt) comparisons from ratings.

    Returns arrays ``row_a, row_b`` (rating-table rows of the two items) and ``label``:
    1 if a is rated higher, 0 if lower, 0.5 for a tie (``ties="soft"``; ``"drop"``
    removes ties). Each pair is oriented at random (seeded) so labels are balanced
    and the position carries no information. The same item rated twice in one group
    is paired with itself only if its two ratings differ — such pairs are dropped.
    """
    if ties not in ("drop", "soft"):
        raise ValueError(f"ties={ties!r}: use 'drop' or 'soft'")
    key = np.asarray(user, np.int64)
    if group is not None:
        key = key * (int(np.max(group)) + 1) + np.asarray(group, np.int64)
    i, j = within_group_pairs(key, max_pairs_per_user, seed)
    rating = np.asarray(rating, np.float64)
    diff = rating[i] - rating[j]
    keep = np.asarray(item)[i] != np.asarray(item)[j]
    if ties == "drop":
        keep &= diff != 0
    i, j, diff = i[keep], j[keep], diff[keep]
    swap = np.random.default_rng(seed + 1).random(len(i)) < 0.5
    row_a, row_b = np.where(swap, j, i), np.where(swap, i, j)
    diff = np.where(swap, -diff, diff)
    label = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5)).astype(np.float32)
    return {"row_a": row_a, "row_b": row_b, "label": label}


def import_ratings(source: TableLike, *, user: str = "user", item: str = "item", rating: str = "rating",
                   prompt: str | None = None, group: str | None = None, ties: str = "drop", items: Any = None,
                   item_ids: Sequence | None = None, prompts: Any = None, prompt_ids: Sequence | None = None,
                   encoder: Any = "wordllama", max_pairs_per_user: int | None = None,
                   empty_users: str = "error", seed: int = 0, name: str | None = None) -> PreferenceDataset:
    """A ratings table ``(user, item, rating[, prompt])`` -> within-user comparisons.

    Items rated by the same user (for the same prompt, when ``prompt`` is given, and with
    the same value of the ``group`` column, e.g. a conversation turn, when given) are
    paired; the higher-rated one is preferred (see `ratings_to_comparisons`).
    ``max_pairs_per_user`` caps the O(n²) pairs of a user (per prompt) by uniform
    sampling. A user left with no comparison (one rating, or only ties) is an error
    by default; ``empty_users="drop"`` removes them (listed in ``meta["dropped_users"]``).
    """
    if empty_users not in ("error", "drop"):
        raise ValueError(f"empty_users={empty_users!r}: use 'error' or 'drop'")
    table, file = _as_table(source, [user, item, prompt, group])
    if table.num_rows == 0:
        raise DatasetError(file, "no rows")
    users, user_ids = map_user_ids(table, file, user)
    col = _column(table, file, rating, "rating")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DatasetError(file, f"rating column '{rating}' has type {col.type}; expected numbers")
    ratings = _to_numpy(pc.cast(col, pa.float64()))
    if not np.isfinite(ratings).all():
        row = int((~np.isfinite(ratings)).argmax())
        raise DatasetError(file, f"rating {ratings[row]} is not finite", row)

    encoder = _build_encoder(encoder, items is None or (prompt is not None and prompts is None))
    item_table, (item_rows,), enc_info = _resolve(table, file, [(item, "item")], matrix=items, ids=item_ids,
                                                  encoder=encoder, what="item")
    prompt_table, prompt_rows = _resolve_prompts(table, file, prompt, items=items, prompts=prompts,
                                                 prompt_ids=prompt_ids, encoder=encoder, item_table=item_table)

    group_rows = prompt_rows
    if group is not None:
        extra_group, _ = _factorize(_column(table, file, group, "group"))
        group_rows = extra_group if prompt_rows is None else prompt_rows * (int(extra_group.max()) + 1) + extra_group
    pairs = ratings_to_comparisons(users, item_rows, ratings, group=group_rows, ties=ties,
                                   max_pairs_per_user=max_pairs_per_user, seed=seed)
    ra, rb = pairs["row_a"], pairs["row_b"]
    pair_user = users[ra]
    counts = np.bincount(pair_user, minlength=len(user_ids))
    dropped = []
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        if empty_users == "error":
            u = int(empty[0])
            row = int(np.flatnonzero(users == u)[0])
            raise DatasetError(file, f"user {user_ids[u]!r} ({int((users == u).sum())} rating(s)) "
                               f"yields no comparison ({len(empty)} such users; "
                               "pass empty_users='drop' to remove them)", row)
        dropped = [user_ids[u] for u in empty]
        remap = np.cumsum(counts > 0) - 1
        pair_user = remap[pair_user]
        user_ids = [uid for uid, c in zip(user_ids, counts) if c > 0]
        if not user_ids:
            raise DatasetError(file, "no user has two distinct ratings: no comparisons")

    comparisons = Comparisons.from_arrays(
        user=pair_user.astype(np.int32), a=item_rows[ra].astype(np.int32), b=item_rows[rb].astype(np.int32),
        label=pairs["label"], prompt=None if prompt_rows is None else prompt_rows[ra].astype(np.int32))
    extra = {"columns": {"user": user, "item": item, "rating": rating, "prompt": prompt, "group": group},
             "ratings_to_comparisons": {"ties": ties, "max_pairs_per_user": max_pairs_per_user, "seed": seed},
             "dropped_users": dropped}
    if items is not None and item_ids is not None:
        extra["item_ids"] = list(item_ids)
    return PreferenceDataset(items=item_table, comparisons=comparisons, prompts=prompt_table,
                             meta=_meta(name, file, user_ids, enc_info, "import_ratings", extra))


# ----------------------------------------------------------------- Hydra data kinds

@dataclasses.dataclass
class ComparisonsTableConfig:
    """``pluralign data=comparisons_table data.path=prefs.csv`` (columns by option)."""

    kind: str = "comparisons_table"
    name: str = "comparisons_table"
    path: str = "???"
    user: str = "user"
    a: str = "a"
    b: str = "b"
    label: Optional[str] = "label"
    # auto | probability (P(a ≻ b), 0/1 = b/a won) | winner ("a"/"b"/"tie", or 0 = a, 1 = b);
    # auto: a string column names the winner, a numeric one is P(a ≻ b)
    label_format: str = "auto"
    prompt: Optional[str] = None
    weight: Optional[str] = None
    items_path: Optional[str] = None  # .npy feature matrix; a/b are then row numbers
    prompts_path: Optional[str] = None
    encoder: str = "wordllama"
    embed_with_prompt: bool = False

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path, self.items_path, self.prompts_path)


@dataclasses.dataclass
class RatingsTableConfig:
    """``pluralign data=ratings_table data.path=ratings.parquet``."""

    kind: str = "ratings_table"
    name: str = "ratings_table"
    path: str = "???"
    user: str = "user"
    item: str = "item"
    rating: str = "rating"
    prompt: Optional[str] = None
    ties: str = "drop"
    items_path: Optional[str] = None
    prompts_path: Optional[str] = None
    encoder: str = "wordllama"
    max_pairs_per_user: Optional[int] = None
    empty_users: str = "error"
    seed: int = 0

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path, self.items_path, self.prompts_path)


def source_fingerprint(*paths: str | os.PathLike | None) -> dict:
    """Absolute path, size and mtime of each source file (or of a folder's files), so a
    dataset cached by `pluralign.data.sources` is rebuilt when a source changes, and a
    relative path run from another directory does not hit the wrong cache entry."""
    out = {}
    for path in paths:
        if path is None:
            continue
        p = pathlib.Path(path).expanduser().absolute()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        stats = [f.stat() for f in files if f.exists()]
        out[str(p)] = {"files": len(stats), "size": sum(st.st_size for st in stats),
                       "mtime_ns": max((st.st_mtime_ns for st in stats), default=0)}
    return out


def make_comparisons_table(config: ComparisonsTableConfig) -> PreferenceDataset:
    return import_comparisons(config.path, user=config.user, a=config.a, b=config.b, label=config.label,
                              label_format=config.label_format, prompt=config.prompt, weight=config.weight, items=config.items_path,
                              prompts=config.prompts_path, encoder=config.encoder,
                              embed_with_prompt=config.embed_with_prompt, name=config.name)


def make_ratings_table(config: RatingsTableConfig) -> PreferenceDataset:
    return import_ratings(config.path, user=config.user, item=config.item, rating=config.rating,
                          prompt=config.prompt, ties=config.ties, items=config.items_path,
                          prompts=config.prompts_path, encoder=config.encoder,
                          max_pairs_per_user=config.max_pairs_per_user, empty_users=config.empty_users,
                          seed=config.seed, name=config.name)
