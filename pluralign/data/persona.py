"""The Persona benchmark (semi-synthetic; PAL paper, Chen et al. 2025, §5) from Anthropic's persona statements.

Source: the 135 ``persona/*.jsonl`` files of github.com/anthropics/evals (Perez et al.
2022, "Discovering Language Model Behaviors with Model-Written Evaluations";
CC-BY-4.0), e.g. packed as ``anthropic_persona.tar.gz`` (``git clone`` the repo, then
``tar czf anthropic_persona.tar.gz persona``, or ``pluralign data fetch persona --from
evals/persona``, which puts it where ``data=persona`` finds it: `pluralign.data.public`). Each file is one persona *trait* (e.g.
``believes-in-gun-rights``); each line a ``statement`` with
``answer_matching_behavior`` " Yes" (someone with the trait would say it) or " No".
`load_persona_statements` takes the ``.tar.gz``, the ``persona/`` folder, or a folder
holding it.

Construction (``make_persona``). The PAL paper's idea — simulated users hold persona
traits and prefer the statement that matches one of their traits — is kept; its exact
recipe (which traits, how pairs are drawn) is not in the public code
(RamyaLab/pluralistic-alignment ships TL;DR and Pick-a-Pic loaders only), so the details
below are ours, chosen so that user types genuinely disagree:

1. Draw ``n_types × traits_per_type`` distinct traits (or take ``traits``) and deal
   them into ``n_types`` **user types**. From each trait keep ``statements_per_trait``
   of its " Yes" statements (confidence ≥ ``min_label_confidence``): the statement
   pool. A statement *matches* a type if it is a " Yes" statement of any of the
   type's traits (a text listed under several traits matches all of them).
2. ``n_users`` users are dealt round-robin into the types (balanced), then shuffled.
3. Each user makes ``comparisons_per_user`` comparisons. A comparison pairs a pool
   statement matching the user's type with one that does not: by default a " Yes"
   statement of *another* type's trait, so the same pair is ordered oppositely by the
   two types involved and no user-agnostic reward can order it (with balanced types
   the population average is a tie). With probability ``contrary_fraction`` the
   non-matching statement is instead a " No" statement of one of the user's own
   traits (a view the trait rejects; other types are indifferent to it).
4. The matching statement is preferred (label flipped with probability
   ``label_noise``); which one is ``a`` is random. There is no prompt.

``meta["truth"]`` holds ``user_group`` (the type of each user), the traits of each
type, and the ceilings of `pluralign.data.synthetic`: ``bayes_optimal_accuracy``
(1 − label_noise) and ``population_optimal_accuracy`` (the best user-agnostic
predictor: the type-share-weighted average preference, ties scored 0.5).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional
import pathlib
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pluralign.data.format import Comparisons, DatasetError, PreferenceDataset
from pluralign.data.importers import source_fingerprint
from pluralign.data.public import locate
from pluralign.data.synthetic import optimal_accuracies
from pluralign.embed import load_encoder

SOURCE_URL = "https://github.com/anthropics/evals/tree/main/persona"


@dataclasses.dataclass
class PersonaConfig:
    kind: str = "persona"
    name: str = "persona"
    path: Optional[str] = None  # anthropic_persona.tar.gz or the persona/ folder; None = the public file (see module docstring)
    n_types: int = 4  # user types
    traits_per_type: int = 2
    traits: list[str] = dataclasses.field(default_factory=list)  # explicit traits, dealt in order; [] = random
    statements_per_trait: int = 100  # " Yes" statements kept per trait (the item pool)
    n_users: int = 400
    comparisons_per_user: int = 60
    contrary_fraction: float = 0.0  # share of comparisons against a " No" statement of the user's own trait
    label_noise: float = 0.0
    min_label_confidence: float = 0.0
    encoder: str = "wordllama"  # `pluralign.embed.load_encoder` name, or a transformers model path / hub id
    seed: int = 0

    def source_path(self) -> pathlib.Path:
        return locate("persona", self.path)

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.source_path())


def _persona_files(path: pathlib.Path) -> dict[str, bytes] | dict[str, pathlib.Path]:
    """trait -> raw JSONL (from a tarball) or file path (from a folder)."""
    if path.is_file():
        try:
            with tarfile.open(path) as tar:
                return {pathlib.PurePosixPath(m.name).stem: tar.extractfile(m).read()
                        for m in tar if m.isfile() and m.name.endswith(".jsonl")}
        except tarfile.TarError as e:
            raise DatasetError(path.name, f"not a readable tar archive: {e}") from e
    if path.is_dir():
        folder = path / "persona" if (path / "persona").is_dir() else path
        return {f.stem: f for f in sorted(folder.glob("*.jsonl"))}
    raise DatasetError(str(path), f"no such file or folder (get the persona/ files from {SOURCE_URL})")


def list_traits(path: str | pathlib.Path) -> list[str]:
    return sorted(_persona_files(pathlib.Path(path)))


def load_persona_statements(path: str | pathlib.Path, traits: list[str] | None = None) -> pa.Table:
    """Columns ``trait, statement, matching (bool: answer_matching_behavior == Yes),
    label_confidence`` for the given traits (default all)."""
    path = pathlib.Path(path)
    files = _persona_files(path)
    if not files:
        raise DatasetError(path.name, f"no persona/*.jsonl files found (get them from {SOURCE_URL})")
    missing = sorted(set(traits or []) - set(files))
    if missing:
        raise ValueError(f"unknown persona trait(s) {missing}; known: {sorted(files)}")
    tables = []
    for trait in traits or sorted(files):
        src = files[trait]
        file = f"{trait}.jsonl"
        try:
            t = pj.read_json(io.BytesIO(src) if isinstance(src, bytes) else src)
        except pa.ArrowException as e:
            raise DatasetError(file, f"cannot parse JSONL: {e}") from e
        for col in ("statement", "answer_matching_behavior"):
            if col not in t.column_names:
                raise DatasetError(file, f"missing field '{col}'")
        answer = pc.utf8_trim_whitespace(t.column("answer_matching_behavior"))
        bad = pc.invert(pc.is_in(answer, value_set=pa.array(["Yes", "No"])))
        if pc.any(pc.fill_null(bad, True)).as_py():
            row = int(np.asarray(pc.fill_null(bad, True)).argmax())
            raise DatasetError(file, f"answer_matching_behavior {t.column('answer_matching_behavior')[row]!r} "
                               "is not ' Yes' or ' No'", row)
        conf = (t.column("label_confidence").cast(pa.float64()) if "label_confidence" in t.column_names
                else pa.chunked_array([np.ones(t.num_rows)]))
        tables.append(pa.table({"trait": pa.array([trait] * t.num_rows), "statement": t.column("statement"),
                                "matching": pc.equal(answer, "Yes"), "label_confidence": conf}))
    return pa.concat_tables(tables)


def _pick(rng: np.random.Generator, pools: list[np.ndarray], which: np.ndarray) -> np.ndarray:
    """One uniform draw from ``pools[which[i]]`` per i, vectorised per pool."""
    out = np.empty(len(which), np.int64)
    for k, pool in enumerate(pools):
        rows = np.flatnonzero(which == k)
        if len(rows):
            if len(pool) == 0:
                raise ValueError(f"user type {k} has no statements to draw from")
            out[rows] = pool[rng.integers(len(pool), size=len(rows))]
    return out


def make_persona(config: PersonaConfig) -> PreferenceDataset:
    c = config
    K, T = c.n_types, c.traits_per_type
    if K < 2 or T < 1 or c.n_users < K or c.comparisons_per_user < 1 or c.statements_per_trait < 1:
        raise ValueError("persona: need n_types >= 2, traits_per_type >= 1, n_users >= n_types, "
                         "comparisons_per_user >= 1, statements_per_trait >= 1")
    if not (0 <= c.contrary_fraction <= 1 and 0 <= c.label_noise < 0.5):
        raise ValueError("persona: contrary_fraction must be in [0, 1] and label_noise in [0, 0.5)")
    rng = np.random.default_rng(c.seed)
    path = c.source_path().expanduser().absolute()
    if c.traits:
        traits = list(c.traits)
        if len(traits) != K * T or len(set(traits)) != len(traits):
            raise ValueError(f"persona.traits: expected {K * T} distinct traits (n_types × traits_per_type), "
                             f"got {len(traits)}")
    else:
        available = list_traits(path)
        if K * T > len(available):
            raise ValueError(f"persona: {K * T} traits requested, the source has {len(available)}")
        traits = [available[i] for i in rng.choice(len(available), K * T, replace=False)]
    type_traits = [traits[k * T:(k + 1) * T] for k in range(K)]
    table = load_persona_statements(path, traits)
    table = table.filter(pc.greater_equal(table.column("label_confidence"), c.min_label_confidence))

    trait_of = np.asarray(pc.index_in(table.column("trait"), value_set=pa.array(traits)))  # [n_rows]
    type_of = trait_of // T
    matching = np.asarray(table.column("matching"))
    # Keep statements_per_trait random " Yes" rows per trait (+ the " No" rows if contrary ones are used).
    priority = rng.random(len(trait_of))
    keep = np.zeros(len(trait_of), bool)
    for yes in (True, False) if c.contrary_fraction > 0 else (True,):
        rows = np.flatnonzero(matching == yes)
        order = rows[np.lexsort((priority[rows], trait_of[rows]))]
        starts = np.searchsorted(trait_of[order], np.arange(len(traits)))
        rank = np.arange(len(order)) - starts[trait_of[order]]
        keep[order[rank < c.statements_per_trait]] = True
    rows = np.flatnonzero(keep)
    statements = table.column("statement").take(pa.array(rows))

    # Items: distinct statement texts. match[item, k]: a " Yes" statement of a trait of type k.
    texts = pc.unique(statements)
    item_of_row = np.asarray(pc.index_in(statements, value_set=texts))
    n_items = len(texts)
    match = np.zeros((n_items, K), bool)
    yes = matching[rows]
    match[item_of_row[yes], type_of[rows][yes]] = True
    contrary = np.zeros((n_items, K), bool)  # " No" statement of one of type k's traits, matching no type
    contrary[item_of_row[~yes], type_of[rows][~yes]] = True
    contrary &= ~match.any(axis=1, keepdims=True)
    positives = [np.flatnonzero(match[:, k]) for k in range(K)]
    others = [np.flatnonzero(match.any(axis=1) & ~match[:, k]) for k in range(K)]
    contraries = [np.flatnonzero(contrary[:, k]) for k in range(K)]

    user_type = rng.permutation(np.arange(c.n_users) % K)
    n = c.n_users * c.comparisons_per_user
    user = np.repeat(np.arange(c.n_users), c.comparisons_per_user)
    k_of = user_type[user]
    preferred = _pick(rng, positives, k_of)
    use_contrary = rng.random(n) < c.contrary_fraction
    other = _pick(rng, others, k_of)
    if use_contrary.any():
        other[use_contrary] = _pick(rng, contraries, k_of[use_contrary])
    swap = rng.random(n) < 0.5
    a, b = np.where(swap, other, preferred), np.where(swap, preferred, other)
    correct = np.where(swap, 0.0, 1.0)
    flip = rng.random(n) < c.label_noise
    label = np.where(flip, 1.0 - correct, correct).astype(np.float32)

    # Ceilings. P_k(a ≻ b) = 1-ε if a matches type k and b not, ε for the reverse, else 1/2.
    eps = c.label_noise
    ma, mb = match[a], match[b]  # [n, K]
    p_type = np.where(ma & ~mb, 1 - eps, np.where(mb & ~ma, eps, 0.5))
    p_user = p_type[np.arange(n), k_of]
    share = np.bincount(user_type, minlength=K) / c.n_users
    p_bar = p_type @ share

    encoder = load_encoder(c.encoder)
    items = encoder.encode(texts.to_pylist()).astype(np.float32, copy=False)
    truth = {
        "user_group": user_type.tolist(),
        "type_traits": type_traits,
        **optimal_accuracies(p_user, p_bar),
        "generator": dataclasses.asdict(c),
    }
    meta = {"name": c.name, "n_users": c.n_users, "source": f"pluralign.data.persona ({SOURCE_URL})",
            "licence": "CC-BY-4.0 (Anthropic persona statements)", "encoder": encoder.describe(),
            "item_texts": texts.to_pylist(), "truth": truth}
    comparisons = Comparisons.from_arrays(user=user, a=a, b=b, label=label)
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)
