"""Texts -> frozen embeddings -> a dataset (docs/design/data-format.md), resumably.

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
`pluralign.data.embed_table` (what ``pluralign embed`` runs) builds a dataset
directory from a table of texts with it. This package knows nothing of datasets:
`pluralign.data` imports it, never the other way round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import numpy as np

from pluralign.atomic import write_file_atomic
from pluralign.embed.encoders import Encoder, Text, check_text

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
            write_file_atomic(manifest, lambda f: f.write(
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
        write_file_atomic(path, lambda f: np.savez(f, keys=keys, vectors=vectors))
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
