"""Relabelled HH-RLHF: two hidden annotator types, helpful and harmless.

Source: the relabelled HH-RLHF of the "hidden context" paper (Siththaranjan et al.
2023, "Distributional Preference Learning") as used by VPL (Poddar et al. 2024):
``{both,helpful,harmless}_{train,test}.jsonl.gz`` with fields ``prompt``,
``responses`` (the two assistant replies), ``label`` (index of the reply preferred
under ``objective``), ``original_label`` (Anthropic's label), ``chosen``/``rejected``
(prompt + the preferred / other reply), ``objective`` ∈ {helpful, harmless} (which
objective produced ``label``) and ``data_subset`` (which HH-RLHF split the prompt
came from). Underlying data: Anthropic HH-RLHF, MIT licence. The loader takes the
folder (reads ``<subset>_<split>.jsonl.gz``) or one such file.

Users (``make_hh_rlhf``). Each row was labelled under one objective only, and the
objective is the hidden user type. Following VPL — which gives each query a context
of other comparisons labelled under the *same* objective — we simulate users per
type: the rows of each objective are shuffled and dealt into users of
``comparisons_per_user`` rows (the remainder is dropped). With ``reuse = r > 1`` every
row is dealt r times, each pass to different users (a user never gets a row twice).
``reuse = 1`` (default) keeps users disjoint, so a seen user's held-out pair was never
trained on through another user. Each comparison is (prompt, response a, response
b), a/b order random, label 1 for the reply preferred under the user's objective.

Items are the replies embedded alone and prompts go to ``prompts.npy``
(``embed="response"``), or each reply is embedded together with its prompt as one
conversation (``embed="conversation"``; prompts.npy is then still written).
``meta["truth"]["user_group"]`` is 0 = helpful, 1 = harmless.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pluralign.data.format import Comparisons, DatasetError, PreferenceDataset
from pluralign.data.importers import embed_distinct, embed_pairs, source_fingerprint
from pluralign.embed import load_encoder

OBJECTIVES = ("helpful", "harmless")
SOURCE_URL = "https://github.com/cassidylaidlaw/hidden-context (relabelled HH-RLHF; VPL: github.com/WEIRDLabUW/vpl_llm)"


@dataclasses.dataclass
class HHRLHFConfig:
    kind: str = "hh_rlhf"
    name: str = "hh_rlhf"
    path: str = "???"  # folder with <subset>_<split>.jsonl.gz, or one such file
    subset: str = "both"  # both | helpful | harmless (file prefix; both = both objectives)
    split: str = "test"
    comparisons_per_user: int = 40
    reuse: int = 1  # how many users each comparison is dealt to (different users per pass)
    max_comparisons: Optional[int] = None  # random subset of rows first (small tests)
    embed: str = "response"  # response | conversation
    encoder: str = "wordllama"
    seed: int = 0

    def source_fingerprint(self) -> dict:
        return source_fingerprint(_source_file(self.path, self.subset, self.split))


def _source_file(path: str | pathlib.Path, subset: str, split: str) -> pathlib.Path:
    """The file `load_hh_rlhf` reads: ``<subset>_<split>.jsonl.gz`` in a folder, or the file given."""
    path = pathlib.Path(path).expanduser()
    return path / f"{subset}_{split}.jsonl.gz" if path.is_dir() else path


def load_hh_rlhf(path: str | pathlib.Path, subset: str = "both", split: str = "test") -> pa.Table:
    """The relabelled rows with columns ``prompt, preferred, other, objective`` (+ ``original_agrees``)."""
    file_path = _source_file(path, subset, split)
    file = file_path.name
    if not file_path.is_file():
        raise DatasetError(file, f"no such file: {file_path} (see {SOURCE_URL})")
    try:
        t = pj.read_json(pa.CompressedInputStream(pa.OSFile(str(file_path)), "gzip")
                         if file.endswith(".gz") else file_path)
    except pa.ArrowException as e:
        raise DatasetError(file, f"cannot parse JSONL: {e}") from e
    for col in ("prompt", "responses", "label", "objective"):
        if col not in t.column_names:
            raise DatasetError(file, f"missing field '{col}'")
        if t.column(col).null_count:
            raise DatasetError(file, f"field '{col}' is null",
                               int(np.asarray(t.column(col).is_null()).argmax()))
    objective = t.column("objective")
    unknown = pc.invert(pc.is_in(objective, value_set=pa.array(OBJECTIVES)))
    if pc.any(unknown).as_py():
        row = int(np.asarray(unknown).argmax())
        raise DatasetError(file, f"objective {objective[row].as_py()!r} is not one of {OBJECTIVES}", row)
    responses = t.column("responses")
    n_resp = np.asarray(pc.list_value_length(responses))
    if (n_resp != 2).any():
        row = int((n_resp != 2).argmax())
        raise DatasetError(file, f"'responses' has {n_resp[row]} entries, expected 2", row)
    label = np.asarray(t.column("label").cast(pa.int64()))
    if ((label != 0) & (label != 1)).any():
        row = int(((label != 0) & (label != 1)).argmax())
        raise DatasetError(file, f"label {label[row]} is not 0 or 1 (an index into 'responses')", row)
    flat = pc.list_flatten(responses)  # [2n]: row i's replies at 2i, 2i+1
    idx = 2 * np.arange(len(label))
    cols = {"prompt": t.column("prompt"), "preferred": flat.take(pa.array(idx + label)),
            "other": flat.take(pa.array(idx + 1 - label)), "objective": objective}
    if "original_label" in t.column_names:
        cols["original_agrees"] = pc.equal(t.column("label"), t.column("original_label"))
    return pa.table(cols)


def deal_users(group: np.ndarray, per_user: int, reuse: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Deals the rows of each group into users: returns (row [N], user [N]).

    Users are numbered group by group (so each user belongs to one group); each of the ``reuse`` passes reshuffles the group's
    rows and cuts them into users of ``per_user`` rows, so no user holds a row twice.
    """
    rows_out, users_out, next_user = [], [], 0
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        n_users = len(members) // per_user
        for _ in range(reuse):
            dealt = rng.permutation(members)[: n_users * per_user]
            rows_out.append(dealt)
            users_out.append(next_user + np.repeat(np.arange(n_users), per_user))
            next_user += n_users
    return np.concatenate(rows_out), np.concatenate(users_out)


def make_hh_rlhf(config: HHRLHFConfig) -> PreferenceDataset:
    c = config
    if c.comparisons_per_user < 1 or c.reuse < 1:
        raise ValueError("hh_rlhf: comparisons_per_user and reuse must be >= 1")
    if c.embed not in ("response", "conversation"):
        raise ValueError(f"hh_rlhf.embed={c.embed!r}: use 'response' or 'conversation'")
    rng = np.random.default_rng(c.seed)
    table = load_hh_rlhf(c.path, c.subset, c.split)
    if c.max_comparisons is not None and c.max_comparisons < table.num_rows:
        table = table.take(pa.array(np.sort(rng.choice(table.num_rows, c.max_comparisons, replace=False))))
    objective = np.asarray(pc.index_in(table.column("objective"), value_set=pa.array(OBJECTIVES)))
    rows, user = deal_users(objective, c.comparisons_per_user, c.reuse, rng)
    if len(rows) == 0:
        raise ValueError(f"hh_rlhf: fewer than comparisons_per_user={c.comparisons_per_user} rows per objective")
    user_group = objective[rows][np.searchsorted(user, np.arange(user.max() + 1))]

    encoder = load_encoder(c.encoder)
    replies = [table.column("preferred"), table.column("other")]
    if c.embed == "response":
        items, (preferred_item, other_item), _ = embed_distinct(replies, encoder)
    else:
        items, (preferred_item, other_item), _ = embed_pairs(table.column("prompt"), replies, encoder)
    prompts, (prompt_of_row,), _ = embed_distinct([table.column("prompt")], encoder)

    swap = rng.random(len(rows)) < 0.5
    pref, oth = preferred_item[rows], other_item[rows]
    comparisons = Comparisons.from_arrays(
        user=user, prompt=prompt_of_row[rows], a=np.where(swap, oth, pref), b=np.where(swap, pref, oth),
        label=np.where(swap, 0.0, 1.0))
    same = comparisons.a == comparisons.b
    if same.any():  # identical replies carry no preference: drop them
        comparisons = comparisons.take(np.flatnonzero(~same))
    truth = {"user_group": user_group.astype(int).tolist(), "group_names": list(OBJECTIVES),
             "generator": dataclasses.asdict(c)}
    if "original_agrees" in table.column_names:
        truth["label_agrees_with_original"] = float(np.mean(np.asarray(table.column("original_agrees"))[rows]))
    meta = {"name": c.name, "n_users": int(user.max()) + 1, "source": f"pluralign.data.hh_rlhf ({SOURCE_URL})",
            "licence": "MIT (Anthropic HH-RLHF)", "encoder": encoder.describe(), "truth": truth}
    return PreferenceDataset(items=items, prompts=prompts, comparisons=comparisons, meta=meta)
