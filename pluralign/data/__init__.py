"""Preference data: the on-disk dataset format, its validation, and user/pair splits."""

from pluralign.data.format import (
    FORMAT_VERSION,
    Comparisons,
    DatasetError,
    PreferenceDataset,
    read_dataset,
    validate_dataset,
    write_dataset,
)
from pluralign.data.splits import (
    PairSplit,
    UserSplit,
    rows_by_user,
    split_seen_pairs,
    split_users,
)

__all__ = [
    "FORMAT_VERSION",
    "Comparisons",
    "DatasetError",
    "PairSplit",
    "PreferenceDataset",
    "UserSplit",
    "read_dataset",
    "rows_by_user",
    "split_seen_pairs",
    "split_users",
    "validate_dataset",
    "write_dataset",
]
