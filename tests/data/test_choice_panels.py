"""Choice panels -> comparisons: chosen ≻ each other available alternative, standardized attributes
plus a one-hot of the alternative as item features, respondents as users; on small fixture files
written here, plus one check on the real files when ../shared/data has them."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np
import pytest

from pluralign.data import DatasetError, validate_dataset
from pluralign.data.choice_panels import ChoicePanelConfig, load_choice_panel
from pluralign.data.sources import load_dataset

SWISS_HEADER = "ID,TRAIN_AV,CAR_AV,SM_AV,TRAIN_TT,TRAIN_CO,TRAIN_HE,SM_TT,SM_CO,SM_HE,SM_SEATS,CAR_TT,CAR_CO,CHOICE"
SWISS_ROWS = [  # respondent 7: two choices; respondent 3: one car-less choice, one unknown
    "7,1,1,1,100,50,30,60,55,10,0,120,70,2",   # Swissmetro over train and car: 2 comparisons
    "7,1,1,1,100,50,30,60,55,10,1,80,40,3",    # car: 2 comparisons
    "3,1,0,1,200,20,60,90,40,20,0,0,0,1",      # train over Swissmetro (car unavailable): 1 comparison
    "3,1,1,1,110,30,30,70,50,10,0,100,60,0",   # unknown choice: dropped and counted
]
RAIL_HEADER = '"id","choiceid","choice","price1","time1","change1","comfort1","price2","time2","change2","comfort2"'
RAIL_ROWS = ['1,1,"choice1",2400,150,0,1,4000,150,0,1', '1,2,"choice2",2400,150,0,1,3200,130,0,1',
             '2,1,"choice2",4000,150,0,1,2400,150,0,1']  # respondent 1's first pair, positions swapped


def _write(tmp_path, name, header, rows, gz=True) -> pathlib.Path:
    path = tmp_path / (name + (".csv.gz" if gz else ".csv"))
    text = "\n".join([header, *rows]) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _named_items(ds):
    """Each comparison as (user id, winner one-hot alternative, loser one-hot alternative)."""
    c, n_alt = ds.comparisons, sum(name.startswith("is_") for name in ds.meta["feature_names"])
    alt = ds.items[:, -n_alt:].argmax(axis=1)
    winner = np.where(c.label == 1, c.a, c.b)
    loser = np.where(c.label == 1, c.b, c.a)
    return sorted((ds.meta["user_ids"][u], int(alt[w]), int(alt[l])) for u, w, l in zip(c.user, winner, loser))


def test_swissmetro_choices_become_chosen_over_each_available_mode(tmp_path):
    ds = load_choice_panel(_write(tmp_path, "swissmetro", SWISS_HEADER, SWISS_ROWS), "swissmetro")
    validate_dataset(ds)
    assert ds.meta["user_ids"] == ["3", "7"] and ds.n_users == 2 and ds.prompts is None
    assert ds.meta["dropped_rows"] == {"unknown_choice": 1, "no_other_available": 0}
    # (respondent, chosen mode, other mode); modes 0/1/2 = train/Swissmetro/car
    assert _named_items(ds) == [("3", 0, 1), ("7", 1, 0), ("7", 1, 2), ("7", 2, 0), ("7", 2, 1)]
    assert ds.meta["feature_names"] == ["time", "cost", "headway", "seats", "is_train", "is_swissmetro", "is_car"]
    # Standardized over the available alternatives of the kept rows: the unavailable car (0, 0) and the
    # unknown-choice row are not part of the mean; a car has no headway or seats (0 = the mean).
    times = np.array([100, 60, 120, 100, 60, 80, 200, 90], float)
    std = ds.meta["standardization"]["time"]
    assert std["mean"] == pytest.approx(times.mean()) and std["std"] == pytest.approx(times.std())
    car = ds.items[ds.items[:, -1] == 1]
    np.testing.assert_array_equal(car[:, 2:4], 0.0)
    # Identical alternatives are one item: train (100, 50, 30) appears in both of respondent 7's choices.
    assert ds.n_items == 7   # 8 used alternatives, the repeated train one counted once
    assert 0.0 in ds.comparisons.label and 1.0 in ds.comparisons.label


def test_rail_tickets_and_a_plain_csv(tmp_path):
    ds = load_choice_panel(_write(tmp_path, "train_data", RAIL_HEADER, RAIL_ROWS, gz=False), "rail_nl")
    validate_dataset(ds)
    assert _named_items(ds) == [("1", 0, 1), ("1", 1, 0), ("2", 1, 0)]
    assert ds.items.shape[1] == 4 + 2
    # Identical tickets are one item (respondent 1's ticket 1 is the same in both choices); the same
    # (price, time, ...) in the other position is another item (the position is a feature): 3 + 2.
    assert ds.n_items == 5


@pytest.mark.parametrize("row, problem", [
    ("5,1,1,1,100,50,30,60,55,10,0,120,70,4", r"row 4: CHOICE = 4 is not one of \[1, 2, 3, 0\]"),
    ("5,1,0,1,100,50,30,60,55,10,0,120,70,3", "row 4: chose car .* but CAR_AV = 0"),
    ("5,1,2,1,100,50,30,60,55,10,0,120,70,3", "row 4: CAR_AV = 2, expected 0 or 1"),
    ("5,1,1,1,100,,30,60,55,10,0,120,70,1", "row 4: column 'TRAIN_CO' is missing or not finite"),
    (",1,1,1,100,50,30,60,55,10,0,120,70,1", "row 4: column 'ID' is null"),
])
def test_bad_rows_name_file_and_row(tmp_path, row, problem):
    path = _write(tmp_path, "swissmetro", SWISS_HEADER, SWISS_ROWS + [row])
    with pytest.raises(DatasetError, match=f"swissmetro.csv.gz {problem}"):
        load_choice_panel(path, "swissmetro")


def test_missing_column_and_unknown_panel(tmp_path):
    path = _write(tmp_path, "swissmetro", SWISS_HEADER.replace("SM_AV", "SMAV"), SWISS_ROWS)
    with pytest.raises(DatasetError, match="missing column 'SM_AV'"):
        load_choice_panel(path, "swissmetro")
    with pytest.raises(ValueError, match="data.panel"):
        ChoicePanelConfig(panel="metro", path=str(path))


def test_registered_data_kind_reads_back_from_the_cache(tmp_path):
    path = _write(tmp_path, "rail", RAIL_HEADER, RAIL_ROWS)
    config = ChoicePanelConfig(name="rail_nl", panel="rail_nl", path=str(path))
    ds = load_dataset(config, cache_dir=tmp_path / "cache")
    assert ds.n_users == 2 and len(ds.comparisons) == 3 and ds.meta["user_ids"] == ["1", "2"]


REAL = pathlib.Path(os.environ.get("PLURALIGN_DATA_DIR", pathlib.Path(__file__).parents[2] / ".." / "shared" / "data"))


@pytest.mark.skipif(not (REAL / "choice_panels" / "swissmetro.csv.gz").exists(), reason="choice panels not present")
def test_the_real_panels():
    sm = load_choice_panel(REAL / "choice_panels" / "swissmetro.csv.gz", "swissmetro")
    validate_dataset(sm)
    counts = np.bincount(sm.comparisons.user)
    assert sm.n_users > 1100 and counts.max() <= 18 and sm.meta["dropped_rows"]["unknown_choice"] > 0
    rail = load_choice_panel(REAL / "choice_panels" / "train_data.csv.gz", "rail_nl")
    validate_dataset(rail)
    assert rail.n_users == 235 and len(rail.comparisons) == 2929


def test_a_file_with_nothing_to_compare_is_an_error(tmp_path):
    path = _write(tmp_path, "swissmetro", SWISS_HEADER, [SWISS_ROWS[3]])  # only an unknown choice
    with pytest.raises(DatasetError, match="no choice has a known chosen alternative"):
        load_choice_panel(path, "swissmetro")
