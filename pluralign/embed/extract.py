"""Texts -> frozen embeddings -> a dataset (DESIGN §3), resumably.

Extraction is the one expensive step of the pipeline (a 7B model over 100k texts is
hours), so it is built to be interrupted:

* each distinct text is embedded once: texts are keyed by a content hash
  (BLAKE2b-128 of the UTF-8 text, or of the (prompt, response) pair);
* finished work lives in a *work directory* as chunk files
  ``chunk-000123.npz`` = (keys uint8 [n, 16], vectors [n, D] float32), each written to a
  temporary file and renamed into place, so a chunk is either whole or absent;
* the work directory is content-addressed, not positional: a rerun (or a second
  call, e.g. for the prompts after the responses) looks every key up and embeds
  only what no chunk holds, whatever order the texts come in;
* ``encoder.json`` in the work directory records the encoder; a rerun with a
  different encoder refuses to mix its vectors with the old ones.

:func:`embed_texts` is the core (texts -> (index, distinct-text table));
:class:`ResumableEncoder` puts it behind the :class:`Encoder` surface so that the
table importers (`pluralign.data.importers`) get resumable extraction for free;
:func:`embed_table` is what ``pluralign embed`` runs: a comparisons or ratings table
of texts -> a dataset directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from pluralign.embed.encoders import Encoder, Text, check_text, load_encoder

KEY_BYTES = 16
_CHUNK_GLOB = "chunk-*.npz"


def text_key(text: Text) -> bytes:
    """Content hash of one text; a pair is length-prefixed so no two pairs collide by joining."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    if isinstance(text, str):
        h.update(b"s")
        h.update(text.encode("utf-8"))
    else:
        prompt = text[0].encode("utf-8")
        h.update(b"p" + len(prompt).to_bytes(8, "little") + prompt)
        h.update(text[1].encode("utf-8"))
    return h.digest()


# ----------------------------------------------------------------- chunk store

def _comparable(description: dict) -> dict:
    # Library versions may change between an interrupted run and its resume without
    # changing the vectors; everything else (model, layer, pooling, dim, ...) must match.
    return {k: v for k, v in description.items() if not k.endswith("version")}


class ChunkStore:
    """Content-addressed embedding chunks in ``work_dir`` (see the module docstring)."""

    def __init__(self, work_dir: str | os.PathLike, encoder_description: dict, dim: int) -> None:
        self.work_dir = pathlib.Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        manifest = self.work_dir / "encoder.json"
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            if _comparable(old) != _comparable(json.loads(json.dumps(encoder_description))):
                raise ValueError(f"work directory {self.work_dir} holds embeddings of another "
                                 f"encoder ({old}); not mixing them with {encoder_description}. "
                                 "Delete it or pick another work_dir.")
        else:
            self._atomic_write(manifest, lambda f: f.write(
                json.dumps(encoder_description, indent=2, default=str).encode()))
        self._rows: dict[bytes, tuple[int, int]] = {}  # key -> (chunk, row)
        self._chunks: list[np.ndarray] = []
        for path in sorted(self.work_dir.glob(_CHUNK_GLOB)):
            with np.load(path, allow_pickle=False) as z:
                keys, vectors = z["keys"], z["vectors"]
            if (vectors.ndim != 2 or vectors.shape[1] != dim or len(keys) != len(vectors)
                    or keys.shape[1:] != (KEY_BYTES,)):
                raise ValueError(f"{path}: chunk of shape {vectors.shape} does not fit dim {dim}")
            self._add(keys, vectors)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: bytes) -> bool:
        return key in self._rows

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        # uint8 rows, not numpy bytes ("S16"), which drop trailing NUL bytes of a digest.
        c = len(self._chunks)
        self._chunks.append(vectors)
        flat = np.ascontiguousarray(keys, dtype=np.uint8).tobytes()
        for r in range(len(keys)):
            self._rows.setdefault(flat[r * KEY_BYTES:(r + 1) * KEY_BYTES], (c, r))

    def _atomic_write(self, path: pathlib.Path, write: Callable[[Any], None]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.work_dir, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise

    def commit(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Writes one chunk atomically, then makes it visible to lookups."""
        keys = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), KEY_BYTES)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            row = int((~np.isfinite(vectors).all(axis=1)).argmax())
            raise ValueError(f"encoder returned NaN/inf for a text (row {row} of this chunk); "
                             "try dtype=float32")
        # Numbered after the files already there, so concurrent work never overwrites a chunk.
        existing = [int(p.stem.split("-")[1]) for p in self.work_dir.glob(_CHUNK_GLOB)]
        path = self.work_dir / f"chunk-{max(existing, default=-1) + 1:06d}.npz"
        self._atomic_write(path, lambda f: np.savez(f, keys=keys, vectors=vectors))
        self._add(keys, vectors)

    def lookup(self, keys: Sequence[bytes]) -> np.ndarray:
        out = np.empty((len(keys), self.dim), np.float32)
        for i, k in enumerate(keys):
            c, r = self._rows[k]
            out[i] = self._chunks[c][r]
        return out


# ----------------------------------------------------------------- progress

def _progress(total: int, already: int, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text as RichText

    class TextsPerSecond(ProgressColumn):
        def render(self, task) -> RichText:
            speed = task.finished_speed or task.speed or (
                task.completed / task.elapsed if task.elapsed else None)
            return RichText(f"{speed:,.1f} texts/s" if speed else "? texts/s")

    resumed = f" ({already:,} from earlier chunks)" if already else ""
    progress = Progress(TextColumn(f"embedding{resumed}"), BarColumn(), MofNCompleteColumn(),
                        TextsPerSecond(), TimeElapsedColumn(), TimeRemainingColumn(),
                        disable=not enabled, transient=False)
    return progress, progress.add_task("embed", total=total)


# ----------------------------------------------------------------- core

@dataclasses.dataclass
class EmbedStats:
    """What the last :func:`embed_texts` call did (for logs, benchmarks and tests)."""

    n_texts: int = 0
    n_distinct: int = 0
    n_reused: int = 0      # distinct texts found in earlier chunks
    n_encoded: int = 0     # distinct texts run through the encoder now
    n_chunks: int = 0      # chunks written now
    seconds: float = 0.0   # time in the encoder

    @property
    def texts_per_second(self) -> float:
        return self.n_encoded / self.seconds if self.seconds > 0 else float("nan")


def embed_texts(texts: Sequence[Text], encoder: Encoder, work_dir: str | os.PathLike | None = None,
                *, chunk_size: int = 4096, batch_size: int | None = None, progress: bool = False,
                stats: EmbedStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeds each distinct text once -> ``(index int64 [n], table float32 [n_distinct, dim])``.

    ``table[index[i]]`` is the vector of ``texts[i]``; distinct texts are in order of
    first appearance. With a ``work_dir``, vectors are committed ``chunk_size`` texts at
    a time and a rerun reuses every committed chunk (see the module docstring); without
    one, nothing touches the disk. ``stats`` (optional) is filled in.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    texts = [check_text(t, i) for i, t in enumerate(texts)]
    keys = [text_key(t) for t in texts]
    first: dict[bytes, int] = {}  # key -> distinct row, in order of first appearance
    index = np.fromiter((first.setdefault(k, len(first)) for k in keys), np.int64, len(keys))
    distinct_keys = list(first)
    distinct_texts: list[Text] = [None] * len(first)  # type: ignore[list-item]
    for t, i in zip(texts, index.tolist()):
        distinct_texts[i] = t

    if work_dir is None:
        store = None
        todo = list(range(len(distinct_keys)))
        table = np.empty((len(distinct_keys), encoder.dim), np.float32)
    else:
        store = ChunkStore(work_dir, encoder.describe(), encoder.dim)
        todo = [i for i, k in enumerate(distinct_keys) if k not in store]
    st = stats if stats is not None else EmbedStats()
    st.n_texts, st.n_distinct = len(texts), len(distinct_keys)
    st.n_reused, st.n_encoded, st.n_chunks, st.seconds = len(distinct_keys) - len(todo), 0, 0, 0.0

    bar, task = _progress(len(todo), st.n_reused, progress and len(todo) > 0)
    with bar:
        for start in range(0, len(todo), chunk_size):
            rows = todo[start:start + chunk_size]
            t0 = time.perf_counter()
            vectors = encoder.encode([distinct_texts[i] for i in rows], batch_size=batch_size,
                                     on_batch=lambda n: bar.advance(task, n))
            st.seconds += time.perf_counter() - t0
            if store is None:
                table[rows] = vectors
            else:
                store.commit([distinct_keys[i] for i in rows], vectors)
            st.n_encoded += len(rows)
            st.n_chunks += 1
    if store is not None:
        table = store.lookup(distinct_keys)
    return index, table


class ResumableEncoder(Encoder):
    """An encoder whose ``encode`` goes through :func:`embed_texts` with a work directory:
    duplicate texts are embedded once and finished chunks survive an interruption.
    Pass it anywhere an encoder is taken (e.g. the ``encoder=`` of the table importers)."""

    def __init__(self, encoder: Encoder, work_dir: str | os.PathLike, *, chunk_size: int = 4096,
                 progress: bool = True) -> None:
        self.base, self.work_dir = encoder, pathlib.Path(work_dir)
        self.chunk_size, self.progress = chunk_size, progress
        self.dim, self.batch_size, self.normalize = encoder.dim, encoder.batch_size, False
        self.stats: list[EmbedStats] = []  # one per encode call

    def describe(self) -> dict:
        return self.base.describe()

    def _encode_batch(self, texts: list[Text]) -> np.ndarray:  # pragma: no cover - encode overrides
        return self.base.encode(texts)

    def encode(self, texts: Sequence[Text], batch_size: int | None = None,
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        st = EmbedStats()
        index, table = embed_texts(texts, self.base, self.work_dir, chunk_size=self.chunk_size,
                                   batch_size=batch_size or self.batch_size,
                                   progress=self.progress, stats=st)
        self.stats.append(st)
        if on_batch is not None:
            on_batch(len(index))
        return table[index]


# ----------------------------------------------------------------- table -> dataset

@dataclasses.dataclass
class EmbedConfig:
    """``pluralign embed``: a table of texts -> a dataset directory (DESIGN §3).

    ``table=comparisons``: one row per judgement, columns ``user``, ``a``, ``b``,
    ``label`` (P(a ≻ b); ``label=null`` for a chosen/rejected layout: ``a=chosen
    b=rejected``), optional ``prompt`` and ``weight``. ``table=ratings``: rows
    ``(user, item, rating[, prompt])`` turned into within-user comparisons.
    """

    encoder: Any = None               # an encoder config (pluralign/conf/encoder/*.yaml)
    input: str = "???"                # CSV / TSV / JSONL / Parquet table
    output: str = "???"               # dataset directory to write
    table: str = "comparisons"        # comparisons | ratings
    name: Optional[str] = None        # dataset name (default: the input file's stem)
    user: str = "user"
    a: str = "a"
    b: str = "b"
    label: Optional[str] = "label"
    prompt: Optional[str] = None      # prompt column (texts); null = no prompts
    weight: Optional[str] = None
    item: str = "item"                # ratings tables
    rating: str = "rating"
    ties: str = "drop"                # ratings: drop | soft (label 0.5)
    max_pairs_per_user: Optional[int] = None
    embed_with_prompt: bool = False   # embed each response as a (prompt, response) conversation
    identical: str = "error"          # comparisons whose a and b texts are equal: error | drop
    storage_dtype: str = "float32"    # items.npy / prompts.npy: float32 | float16
    chunk_size: int = 4096            # texts per committed chunk
    batch_size: Optional[int] = None  # texts per encoder batch (default: the encoder's own)
    work_dir: Optional[str] = None    # default: <output>.partial
    keep_work_dir: bool = False       # keep the chunks after a successful write
    overwrite: bool = False
    progress: bool = True


def _drop_identical(path: str, a: str, b: str, other_text_columns=()):
    """The table without rows whose ``a`` and ``b`` texts are equal (real data has them:
    2 of the 4,043 relabelled HH-RLHF rows), and how many were dropped."""
    import pyarrow.compute as pc

    from pluralign.data.importers import read_table

    table = read_table(path, [a, b, *(c for c in other_text_columns if c is not None)])
    missing = [col for col in (a, b) if col not in table.column_names]
    if missing:  # leave the message to the importer
        return table, 0
    same = pc.fill_null(pc.equal(table.column(a), table.column(b)), False)
    kept = table.filter(pc.invert(same))
    return kept, table.num_rows - kept.num_rows


def embed_table(config: EmbedConfig, encoder: Encoder | None = None) -> pathlib.Path:
    """Runs ``config`` (the ``pluralign embed`` job); returns the written dataset's path."""
    from pluralign.data.format import write_dataset
    from pluralign.data.importers import import_comparisons, import_ratings

    c = config
    for key in ("input", "output"):
        if getattr(c, key) in (None, "", "???"):
            raise ValueError(f"pluralign embed needs {key}=<path>")
    if c.table not in ("comparisons", "ratings"):
        raise ValueError(f"table={c.table!r}: expected 'comparisons' or 'ratings'")
    if c.storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype={c.storage_dtype!r}: expected float32 or float16")
    if c.identical not in ("error", "drop"):
        raise ValueError(f"identical={c.identical!r}: expected 'error' or 'drop'")
    output = pathlib.Path(c.output).absolute()
    if output.exists() and not c.overwrite:  # before hours of embedding, not after
        raise FileExistsError(f"{output} exists (pass overwrite=true to replace it)")
    base = encoder if encoder is not None else load_encoder(
        c.encoder if c.encoder is not None else "wordllama")
    work_dir = pathlib.Path(c.work_dir) if c.work_dir else output.with_name(output.name + ".partial")
    enc = ResumableEncoder(base, work_dir, chunk_size=c.chunk_size, progress=c.progress)
    if c.batch_size:
        enc.batch_size = c.batch_size

    source, dropped = c.input, 0
    if c.table == "comparisons" and c.identical == "drop":
        source, dropped = _drop_identical(c.input, c.a, c.b, [c.user, c.prompt])

    if c.table == "comparisons":
        ds = import_comparisons(source, user=c.user, a=c.a, b=c.b, label=c.label, prompt=c.prompt,
                                weight=c.weight, encoder=enc, embed_with_prompt=c.embed_with_prompt,
                                name=c.name or pathlib.Path(c.input).name.split(".")[0])
    else:
        ds = import_ratings(c.input, user=c.user, item=c.item, rating=c.rating, prompt=c.prompt,
                            ties=c.ties, encoder=enc, max_pairs_per_user=c.max_pairs_per_user,
                            name=c.name)
    meta = dict(ds.meta)
    meta["encoder"] = {**base.describe(), "storage_dtype": c.storage_dtype}
    encoded, seconds = sum(s.n_encoded for s in enc.stats), sum(s.seconds for s in enc.stats)
    meta["embed"] = {"texts": sum(s.n_texts for s in enc.stats),
                     "encoded": encoded,
                     "encode_seconds": round(seconds, 3),
                     "texts_per_second": round(encoded / seconds, 1) if seconds > 0 else None,
                     "reused_from_work_dir": sum(s.n_reused for s in enc.stats),
                     **({"dropped_identical": dropped} if c.identical == "drop" else {})}
    store = np.dtype(c.storage_dtype)
    path = write_dataset(output, ds.items.astype(store, copy=False), ds.comparisons, meta=meta,
                         prompts=None if ds.prompts is None else ds.prompts.astype(store, copy=False),
                         attributes=ds.attributes, overwrite=c.overwrite)
    if not c.keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    return path
