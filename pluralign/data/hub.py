"""Loaders for the public preference datasets the pluralistic-alignment papers use.

For users with network access: each ``load_*`` fetches a Hugging Face hub dataset with
``datasets.load_dataset`` (``pip install "pluralign[hub]"``; imported lazily) and turns
it into a :class:`PreferenceDataset` (write it with `pluralign.data.write_dataset`). The
parsing is a separate function over the records — a ``pyarrow.Table`` or a list of dicts
in the hub schema — so it is tested offline on small fixtures (tests/data/test_hub.py)
and can be run on a local copy of the files. Schemas as published on the hub (2024–25):

``openai/summarize_from_feedback`` (config ``comparisons``; Reddit TL;DR + CNN/DM, Stiennon
et al. 2020; used by PAL with worker ids as users) — ``info{id, post, title, subreddit,
article}``, ``summaries[2]{text, policy, note}``, ``choice`` (0/1: index of the preferred
summary), ``worker``, ``batch``, ``split``, ``extra{confidence}``.
→ `summarize_comparisons`: user = worker, prompt = post (or article), a/b = the summaries,
label = 1 if summary 0 was chosen.

``HannahRoseKirk/prism-alignment`` (config ``conversations``; Kirk et al. 2024) —
``conversation_id``, ``user_id``, ``conversation_history[]{turn, role ("user"/"model"),
content, model_name, score (1–100), if_chosen, within_turn_id}``.
→ `prism_ratings`: one rating per model reply (user, prompt = the user message of that turn,
item = the reply, rating = score, group = conversation + turn), then within-turn
comparisons with `import_ratings` (the higher-scored reply preferred).

``openbmb/UltraFeedback`` (Cui et al. 2023) — ``instruction``, ``completions[]{model,
response, annotations{helpfulness, honesty, instruction_following, truthfulness: {Rating
("1".."5" or "N/A"), Rationale}}}``.
→ `ultrafeedback_p` builds UltraFeedback-P (VPL, Poddar et al. 2024): each fine-grained
attribute is a user type ("P-2": helpfulness, honesty; "P-4": all four); a user of type t
prefers the completion rated higher on t. Pairs of completions of one instruction on
which the chosen attributes disagree (``controversial_only``, as in VPL) are dealt into
users of ``comparisons_per_user`` per type, disjoint across users.

``nvidia/HelpSteer2`` (Wang et al. 2024) — ``prompt``, ``response``, and 0–4 ratings
``helpfulness, correctness, coherence, complexity, verbosity``.
→ `helpsteer2_dataset`: items = responses with ``attributes.npy`` = the five ratings (for
multi-objective models: DPA / ArmoRM regress them); comparisons by simulated users, each a
random non-negative direction v_u over the attributes (DPA's user model, R_u = v_uᵀ r),
comparing the responses of one prompt; ``meta["truth"]["user_directions"]``.

``yuvalkirstain/pickapic_v2`` (Kirstain et al. 2023; used by PAL) — ``caption``, ``user_id``,
``image_0_uid``, ``image_1_uid``, ``label_0`` (1, 0 or 0.5 for a tie), ``jpg_0``/``jpg_1``
(image bytes). → `pickapic_comparisons`: user = user_id, prompt = caption, a/b = image uids.
Images need an image encoder; none ships offline here, so `load_pickapic` takes the
feature matrix and the uid of each row, computed by the caller with a CLIP-type model,
e.g. ``transformers.CLIPModel.get_image_features`` over ``jpg_0``/``jpg_1`` (and
``get_text_features`` over captions for ``prompt_features``, same space).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pluralign.data.format import Comparisons, DatasetError, PreferenceDataset
from pluralign.data.hh_rlhf import deal_users
from pluralign.data.importers import import_comparisons, import_ratings, read_table, source_fingerprint, within_group_pairs
from pluralign.embed import load_encoder

Records = pa.Table | Sequence[dict]

ULTRAFEEDBACK_ATTRIBUTES = ("helpfulness", "honesty", "instruction_following", "truthfulness")
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _table(records: Records) -> pa.Table:
    return records if isinstance(records, pa.Table) else pa.Table.from_pylist(list(records))


def _need(t: pa.Table, source: str, *fields: str) -> None:
    missing = [f for f in fields if f not in t.column_names]
    if missing:
        raise DatasetError(source, f"missing field(s) {missing} (has {t.column_names}); not the expected schema")


def _field(col, *path: str):
    for name in path:
        col = pc.struct_field(col, name)
    return col


def hub_records(name: str, config: str | None = None, split: str = "train", max_rows: int | None = None,
                **kwargs: Any) -> pa.Table:
    """``datasets.load_dataset(name, config, split=...)`` as a pyarrow table (needs network)."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("hub loaders need the 'datasets' package: pip install 'pluralign[hub]'") from e
    ds = datasets.load_dataset(name, config, split=split, **kwargs)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    try:
        return ds.with_format("arrow")[:]
    except (TypeError, ValueError, AttributeError):
        return pa.Table.from_pylist(list(ds))


# ----------------------------------------------------------------- Reddit TL;DR (summarize_from_feedback)

def summarize_comparisons(records: Records) -> pa.Table:
    """Comparisons table (user, prompt, a, b, label, confidence) from the ``comparisons`` config."""
    t = _table(records)
    _need(t, "openai/summarize_from_feedback", "info", "summaries", "choice", "worker")
    info = t.column("info")
    names = {f.name for f in info.type}
    post = _field(info, "post") if "post" in names else pa.nulls(t.num_rows, pa.string())
    article = _field(info, "article") if "article" in names else pa.nulls(t.num_rows, pa.string())
    prompt = pc.coalesce(post, article)
    lengths = np.asarray(pc.list_value_length(t.column("summaries")))
    if (lengths != 2).any():
        row = int((lengths != 2).argmax())
        raise DatasetError("openai/summarize_from_feedback", f"{lengths[row]} summaries, expected 2", row)
    summaries = t.column("summaries")
    choice = np.asarray(t.column("choice").cast(pa.int64()))
    if ((choice != 0) & (choice != 1)).any():
        row = int(((choice != 0) & (choice != 1)).argmax())
        raise DatasetError("openai/summarize_from_feedback", f"choice {choice[row]} is not 0 or 1", row)
    cols = {"user": t.column("worker"), "prompt": prompt,
            "a": _field(pc.list_element(summaries, 0), "text"), "b": _field(pc.list_element(summaries, 1), "text"),
            "label": pa.array((1 - choice).astype(np.float32))}
    if "extra" in t.column_names and "confidence" in {f.name for f in t.column("extra").type}:
        cols["confidence"] = _field(t.column("extra"), "confidence")
    return pa.table(cols)


def load_summarize_from_feedback(split: str = "validation", encoder: Any = "wordllama",
                                 max_rows: int | None = None, **import_options: Any) -> PreferenceDataset:
    table = summarize_comparisons(hub_records("openai/summarize_from_feedback", "comparisons", split, max_rows))
    return import_comparisons(table, prompt="prompt", encoder=encoder, name="summarize_from_feedback",
                              **import_options)


# ----------------------------------------------------------------- PRISM

def prism_ratings(records: Records) -> pa.Table:
    """Ratings table (user, prompt, item, rating, group) from the ``conversations`` config."""
    t = _table(records)
    _need(t, "HannahRoseKirk/prism-alignment", "conversation_id", "user_id", "conversation_history")
    history = t.column("conversation_history")
    parent = np.asarray(pc.list_parent_indices(history))             # conversation of each turn entry
    turns = pc.list_flatten(history)
    role = _field(turns, "role")
    turn = np.asarray(pc.fill_null(_field(turns, "turn"), -1).cast(pa.int64()))
    conv = pc.take(t.column("conversation_id").cast(pa.string()), pa.array(parent))
    key = pc.binary_join_element_wise(conv, pa.array(turn.astype(str)), "#")  # conversation#turn
    is_user = np.asarray(pc.equal(role, "user"))
    is_model = np.asarray(pc.equal(role, "model")) & np.asarray(pc.is_valid(_field(turns, "score")))
    user_keys = pc.filter(key, pa.array(is_user))
    prompt_of = pc.index_in(key, value_set=user_keys)                # the user message of the same turn
    keep = is_model & np.asarray(pc.is_valid(prompt_of))
    sel = pa.array(keep)
    return pa.table({
        "user": pc.filter(pc.take(t.column("user_id").cast(pa.string()), pa.array(parent)), sel),
        "prompt": pc.filter(pc.take(pc.filter(_field(turns, "content"), pa.array(is_user)),
                                    pc.fill_null(prompt_of, 0)), sel),
        "item": pc.filter(_field(turns, "content"), sel),
        "rating": pc.filter(_field(turns, "score").cast(pa.float64()), sel),
        "group": pc.filter(key, sel),
    })


def load_prism(encoder: Any = "wordllama", max_rows: int | None = None, ties: str = "drop",
               **import_options: Any) -> PreferenceDataset:
    ratings = prism_ratings(hub_records("HannahRoseKirk/prism-alignment", "conversations", "train", max_rows))
    return import_ratings(ratings, prompt="prompt", group="group", ties=ties, encoder=encoder, name="prism",
                          empty_users="drop", **import_options)


# ----------------------------------------------------------------- UltraFeedback-P

def ultrafeedback_ratings(records: Records, attributes: Sequence[str] = ULTRAFEEDBACK_ATTRIBUTES) -> pa.Table:
    """One row per completion: prompt, item (the response), prompt_index, and a float
    rating per attribute (NaN for "N/A")."""
    t = _table(records)
    _need(t, "openbmb/UltraFeedback", "instruction", "completions")
    completions = t.column("completions")
    parent = pa.array(pc.list_parent_indices(completions))
    flat = pc.list_flatten(completions)
    cols = {"prompt_index": parent, "prompt": pc.take(t.column("instruction"), parent),
            "item": _field(flat, "response")}
    for attr in attributes:
        rating = _field(flat, "annotations", attr, "Rating").cast(pa.string())
        numeric = pc.if_else(pc.match_substring_regex(rating, r"^\s*[0-9.]+\s*$"), rating, None)
        cols[attr] = pc.fill_null(numeric.cast(pa.float64()), float("nan"))
    return pa.table(cols)


def ultrafeedback_p(records: Records, attributes: Sequence[str] = ("helpfulness", "honesty"),
                    comparisons_per_user: int = 8, controversial_only: bool = True, seed: int = 0) -> pa.Table:
    """UltraFeedback-P comparisons (user, user_type, prompt, a, b, label) with one user type per attribute."""
    ratings = ultrafeedback_ratings(records, attributes)
    rng = np.random.default_rng(seed)
    i, j = within_group_pairs(np.asarray(ratings.column("prompt_index")))
    scores = np.stack([np.asarray(ratings.column(a)) for a in attributes], axis=1)  # [n_completions, T]
    diff = scores[i] - scores[j]                                                     # [n_pairs, T]
    decided = np.isfinite(diff).all(axis=1) & (diff != 0).all(axis=1)
    if controversial_only:  # the attributes order the pair differently: users of different types disagree
        decided &= (np.sign(diff) != np.sign(diff[:, :1])).any(axis=1)
    i, j, diff = i[decided], j[decided], diff[decided]
    pair_type = rng.integers(len(attributes), size=len(i))   # each pair judged by one user type
    rows, user = deal_users(pair_type, comparisons_per_user, 1, rng)
    swap = rng.random(len(rows)) < 0.5
    first, second = i[rows], j[rows]
    a, b = np.where(swap, second, first), np.where(swap, first, second)
    d = diff[rows, pair_type[rows]]
    label = np.where(swap, d < 0, d > 0).astype(np.float32)
    item, prompt = ratings.column("item"), ratings.column("prompt")
    return pa.table({"user": user, "user_type": pair_type[rows], "prompt": pc.take(prompt, pa.array(a)),
                     "a": pc.take(item, pa.array(a)), "b": pc.take(item, pa.array(b)), "label": label})


def ultrafeedback_p_dataset(records: Records, attributes: Sequence[str] = ("helpfulness", "honesty"),
                            comparisons_per_user: int = 8, *, encoder: Any = "wordllama", seed: int = 0,
                            controversial_only: bool = True, name: str | None = None) -> PreferenceDataset:
    """UltraFeedback-P as a dataset (texts embedded with ``encoder``); each user's type in ``meta["truth"]``."""
    table = ultrafeedback_p(records, attributes, comparisons_per_user, controversial_only, seed=seed)
    ds = import_comparisons(table, prompt="prompt", encoder=encoder, name=name or f"ultrafeedback_p{len(attributes)}")
    user_type = np.asarray(table.column("user_type"))
    first_row = {u: r for r, u in reversed(list(enumerate(table.column("user").to_pylist())))}
    ds.meta["truth"] = {"user_group": [int(user_type[first_row[u]]) for u in ds.meta["user_ids"]],
                        "group_names": list(attributes)}
    return ds


def load_ultrafeedback_p(attributes: Sequence[str] = ("helpfulness", "honesty"), comparisons_per_user: int = 8,
                         encoder: Any = "wordllama", max_rows: int | None = None, seed: int = 0) -> PreferenceDataset:
    return ultrafeedback_p_dataset(hub_records("openbmb/UltraFeedback", None, "train", max_rows), attributes,
                                   comparisons_per_user, encoder=encoder, seed=seed)


# ----------------------------------------------------------------- HelpSteer2

def helpsteer2_dataset(records: Records, *, n_users: int = 200, comparisons_per_user: int = 20,
                       attributes: Sequence[str] = HELPSTEER2_ATTRIBUTES, encoder: Any = "wordllama",
                       seed: int = 0) -> PreferenceDataset:
    """Items = responses with ``attributes.npy`` [n_items, m]; simulated direction users compare
    responses to the same prompt (label 1 when v_uᵀ(r_a − r_b) > 0; exact ties dropped)."""
    t = _table(records)
    _need(t, "nvidia/HelpSteer2", "prompt", "response", *attributes)
    rng = np.random.default_rng(seed)
    scores = np.stack([np.asarray(pc.fill_null(t.column(a).cast(pa.float64()), float("nan")))
                       for a in attributes], axis=1).astype(np.float32)            # [n, m]
    prompt_texts = pc.unique(t.column("prompt"))
    prompt_of = np.asarray(pc.index_in(t.column("prompt"), value_set=prompt_texts))
    i, j = within_group_pairs(prompt_of)
    if len(i) == 0:
        raise DatasetError("nvidia/HelpSteer2", "no prompt has two responses to compare")
    directions = np.abs(rng.standard_normal((n_users, len(attributes))))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)                 # v_u ∈ S^{m-1}, ≥ 0
    user = np.repeat(np.arange(n_users), comparisons_per_user)
    pick = rng.integers(len(i), size=len(user))
    a, b = i[pick], j[pick]
    swap = rng.random(len(user)) < 0.5
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    margin = np.einsum("nm,nm->n", directions[user], np.nan_to_num(scores[a] - scores[b]))
    keep = margin != 0
    comparisons = Comparisons.from_arrays(user=user[keep], a=a[keep], b=b[keep], prompt=prompt_of[a[keep]],
                                          label=(margin[keep] > 0).astype(np.float32))
    counts = np.bincount(comparisons.user, minlength=n_users)
    if (counts == 0).any():  # before the encoding, the slow part
        raise DatasetError("nvidia/HelpSteer2", f"user {int((counts == 0).argmax())} got only tied pairs; "
                           "raise comparisons_per_user")
    enc = load_encoder(encoder)
    items = enc.encode(t.column("response").to_pylist()).astype(np.float32, copy=False)
    prompts = enc.encode(prompt_texts.to_pylist()).astype(np.float32, copy=False)
    meta = {"name": "helpsteer2", "n_users": n_users, "source": "nvidia/HelpSteer2 (CC-BY-4.0)",
            "encoder": enc.describe(), "attribute_names": list(attributes),
            "truth": {"user_directions": directions.tolist()}}
    return PreferenceDataset(items=items, prompts=prompts, comparisons=comparisons, attributes=scores, meta=meta)


def load_helpsteer2(split: str = "train", max_rows: int | None = None, **options: Any) -> PreferenceDataset:
    return helpsteer2_dataset(hub_records("nvidia/HelpSteer2", None, split, max_rows), **options)


# ----------------------------------------------------------------- Pick-a-Pic v2

def pickapic_comparisons(records: Records) -> pa.Table:
    """Comparisons table (user, prompt, a, b, label) with image uids as items; ties are 0.5."""
    t = _table(records)
    _need(t, "yuvalkirstain/pickapic_v2", "user_id", "caption", "image_0_uid", "image_1_uid", "label_0")
    return pa.table({"user": t.column("user_id"), "prompt": t.column("caption"),
                     "a": t.column("image_0_uid"), "b": t.column("image_1_uid"),
                     "label": t.column("label_0").cast(pa.float32())})


def load_pickapic(image_features: Any, image_ids: Sequence, *, prompt_features: Any = None,
                  prompt_ids: Sequence | None = None, split: str = "validation_unique",
                  max_rows: int | None = None) -> PreferenceDataset:
    """Pick-a-Pic v2 on image features the caller computed (rows named by ``image_ids``);
    captions become prompts only when ``prompt_features``/``prompt_ids`` (caption texts) are given."""
    table = pickapic_comparisons(hub_records("yuvalkirstain/pickapic_v2", None, split, max_rows))
    return import_comparisons(table, items=image_features, item_ids=image_ids,
                              prompt="prompt" if prompt_features is not None else None,
                              prompts=prompt_features, prompt_ids=prompt_ids, name="pickapic_v2")


# ----------------------------------------------------------------- Hydra data kinds

# `data=tldr | ultrafeedback_p | helpsteer2 | pickapic | prism`: each fetches its hub dataset
# (network) or reads a local copy of the records in the hub schema (`path=` a .jsonl/.json/
# .parquet file, e.g. written with `hub_records(...).to_pylist()` or `datasets`' to_json), so a
# paper-table experiment (conf/experiment/paper_*.yaml) runs the same way online and offline.
# `encoder` is an encoder name or the options of `encoder=hf` as a mapping, e.g.
# {name: hf, model: facebook/opt-350m, dtype: bfloat16} (see pluralign.embed.load_encoder).

def _records(config, name: str, hub_config: str | None) -> pa.Table:
    if config.path is not None:
        table = read_table(config.path)
        return table if config.max_rows is None else table.slice(0, config.max_rows)
    return hub_records(name, hub_config, config.split, config.max_rows)


@dataclasses.dataclass
class TLDRConfig:
    """``data=tldr``: openai/summarize_from_feedback comparisons, users = the labelling workers."""

    kind: str = "tldr"
    name: str = "tldr"
    split: str = "validation"
    path: Optional[str] = None  # a local copy of the records in the hub schema; None = fetch from the hub
    max_rows: Optional[int] = None
    encoder: Any = "wordllama"
    embed_with_prompt: bool = True  # each summary embedded together with its post (prompt-conditioned items)

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path)


@dataclasses.dataclass
class UltraFeedbackPConfig:
    """``data=ultrafeedback_p``: VPL's UltraFeedback-P, one user type per fine-grained attribute."""

    kind: str = "ultrafeedback_p"
    name: str = "ultrafeedback_p"
    attributes: list[str] = dataclasses.field(default_factory=lambda: ["helpfulness", "honesty"])
    comparisons_per_user: int = 8
    controversial_only: bool = True
    split: str = "train"
    path: Optional[str] = None  # local copy of the records; None = fetch from the hub
    max_rows: Optional[int] = None
    encoder: Any = "wordllama"
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.attributes) - set(ULTRAFEEDBACK_ATTRIBUTES))
        if len(self.attributes) < 2 or unknown:
            raise ValueError(f"data.attributes must be >= 2 of {list(ULTRAFEEDBACK_ATTRIBUTES)}, got {self.attributes}")

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path)


@dataclasses.dataclass
class HelpSteer2Config:
    """``data=helpsteer2``: responses with their five attribute ratings; simulated direction users."""

    kind: str = "helpsteer2"
    name: str = "helpsteer2"
    n_users: int = 200
    comparisons_per_user: int = 20
    attributes: list[str] = dataclasses.field(default_factory=lambda: list(HELPSTEER2_ATTRIBUTES))
    split: str = "train"
    path: Optional[str] = None  # local copy of the records; None = fetch from the hub
    max_rows: Optional[int] = None
    encoder: Any = "wordllama"
    seed: int = 0

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path)


@dataclasses.dataclass
class PickapicConfig:
    """``data=pickapic``: Pick-a-Pic v2 on image features the caller computed (e.g. OpenCLIP ViT-H/14)."""

    kind: str = "pickapic"
    name: str = "pickapic_v2"
    image_features: Optional[str] = None  # .npy [n_images, D]; required
    image_ids: Optional[str] = None  # .npy or .txt (one per line): the image uid of each row; required
    prompt_features: Optional[str] = None  # .npy caption features in the same space (optional)
    prompt_ids: Optional[str] = None  # the caption text of each row (.npy or .txt)
    split: str = "validation_unique"
    path: Optional[str] = None  # local copy of the records; None = fetch from the hub
    max_rows: Optional[int] = None

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path, self.image_features, self.image_ids, self.prompt_features,
                            self.prompt_ids)


@dataclasses.dataclass
class PrismConfig:
    """``data=prism``: PRISM's per-turn ratings of model replies -> within-turn comparisons."""

    kind: str = "prism"
    name: str = "prism"
    ties: str = "drop"
    split: str = "train"
    path: Optional[str] = None  # local copy of the records; None = fetch from the hub
    max_rows: Optional[int] = None
    encoder: Any = "wordllama"

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.path)


def _ids(path: str) -> list:
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False).tolist()
    return [line for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def make_tldr(config: TLDRConfig) -> PreferenceDataset:
    table = summarize_comparisons(_records(config, "openai/summarize_from_feedback", "comparisons"))
    return import_comparisons(table, prompt="prompt", encoder=config.encoder, name=config.name,
                              embed_with_prompt=config.embed_with_prompt)


def make_ultrafeedback_p(config: UltraFeedbackPConfig) -> PreferenceDataset:
    return ultrafeedback_p_dataset(_records(config, "openbmb/UltraFeedback", None), config.attributes,
                                   config.comparisons_per_user, encoder=config.encoder, seed=config.seed,
                                   controversial_only=config.controversial_only, name=config.name)


def make_helpsteer2(config: HelpSteer2Config) -> PreferenceDataset:
    ds = helpsteer2_dataset(_records(config, "nvidia/HelpSteer2", None), n_users=config.n_users,
                            comparisons_per_user=config.comparisons_per_user, attributes=config.attributes,
                            encoder=config.encoder, seed=config.seed)
    ds.meta["name"] = config.name
    return ds


def make_pickapic(config: PickapicConfig) -> PreferenceDataset:
    if config.image_features is None or config.image_ids is None:
        raise ValueError("data=pickapic needs data.image_features=<.npy> and data.image_ids=<.npy|.txt>: "
                         "image features computed with an image encoder (e.g. OpenCLIP ViT-H/14) and each row's uid")
    with_prompts = config.prompt_features is not None
    table = pickapic_comparisons(_records(config, "yuvalkirstain/pickapic_v2", None))
    return import_comparisons(table, items=config.image_features, item_ids=_ids(config.image_ids),
                              prompt="prompt" if with_prompts else None, prompts=config.prompt_features,
                              prompt_ids=_ids(config.prompt_ids) if with_prompts else None, name=config.name)


def make_prism(config: PrismConfig) -> PreferenceDataset:
    ratings = prism_ratings(_records(config, "HannahRoseKirk/prism-alignment", "conversations"))
    return import_ratings(ratings, prompt="prompt", group="group", ties=config.ties, encoder=config.encoder,
                          name=config.name, empty_users="drop")
