"""``pluralign embed``: a comparisons or ratings table of texts -> a dataset directory (docs/design/data-format.md).

The texts are embedded through `pluralign.embed.extract.ResumableEncoder`, so an interrupted
job resumes from its work directory; the table is read by the importers of
`pluralign.data.importers` and written by `pluralign.data.format.write_dataset`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
from typing import Any, Optional

import numpy as np
import pyarrow.compute as pc

from pluralign.data.format import write_dataset
from pluralign.data.importers import (conversation_texts, import_comparisons, import_ratings, is_conversation_type,
                                      read_table)
from pluralign.embed.encoders import Encoder, load_encoder
from pluralign.embed.extract import ResumableEncoder


@dataclasses.dataclass
class EmbedConfig:
    """``pluralign embed``: a table of texts -> a dataset directory (docs/design/data-format.md).

    ``table=comparisons``: one row per judgement, columns ``user``, ``a``, ``b``,
    ``label`` (P(a ≻ b); ``label=null`` for a chosen/rejected layout: ``a=chosen
    b=rejected``), optional ``prompt`` and ``weight``. ``table=ratings``: rows
    ``(user, item, rating[, prompt])`` turned into within-user comparisons.
    Texts may be conversations, as in TRL's conversational preference format (``prompt``,
    ``chosen``, ``rejected`` each a list of ``{role, content}`` messages): ``user=user_id
    a=chosen b=rejected label=null prompt=prompt``; each is embedded as its messages' contents.
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
    table = read_table(path, [a, b, *(c for c in other_text_columns if c is not None)])
    missing = [col for col in (a, b) if col not in table.column_names]
    if missing:  # leave the message to the importer
        return table, 0
    a_text, b_text = (conversation_texts(table.column(c), pathlib.Path(path).name, c) if is_conversation_type(table.column(c).type)
                      else table.column(c) for c in (a, b))  # TRL's conversational format: compare the texts
    same = pc.fill_null(pc.equal(a_text, b_text), False)
    kept = table.filter(pc.invert(same))
    return kept, table.num_rows - kept.num_rows


def embed_table(config: EmbedConfig, encoder: Encoder | None = None) -> pathlib.Path:
    """Runs ``config`` (the ``pluralign embed`` job); returns the written dataset's path."""
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
