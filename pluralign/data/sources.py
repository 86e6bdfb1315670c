"""Where a run's dataset comes from: a directory on disk, or a built-in generator.

Generated datasets are written once to a cache directory keyed by a hash of their
configuration and then read back through `read_dataset`, so synthetic and real data
take exactly the same path into training (format, validation, memory mapping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

from pluralign.data.cyclic import (
    CyclicSkewConfig, CyclicTripletsConfig, CyclicUsersConfig, make_cyclic_skew, make_cyclic_triplets, make_cyclic_users,
)
from pluralign.data.format import PreferenceDataset, read_dataset, write_dataset
from pluralign.data.hh_rlhf import HHRLHFConfig, make_hh_rlhf
from pluralign.data.importers import ComparisonsTableConfig, RatingsTableConfig, make_comparisons_table, make_ratings_table
from pluralign.data.persona import PersonaConfig, make_persona
from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
from pluralign.data.hidden_types import HiddenTypesConfig, make_hidden_types
from pluralign.data.multi_attribute import MultiAttributeConfig, make_multi_attribute
from pluralign.data.low_rank import SharedPlusLowRankConfig, make_shared_plus_low_rank
from pluralign.data.idiosyncratic import IdiosyncraticConfig, make_idiosyncratic
from pluralign.data.choice_panels import ChoicePanelConfig, make_choice_panel
from pluralign.data.hub import (
    HelpSteer2Config, PickapicConfig, PrismConfig, TLDRConfig, UltraFeedbackPConfig, make_helpsteer2, make_pickapic,
    make_prism, make_tldr, make_ultrafeedback_p,
)


@dataclasses.dataclass
class DiskDataConfig:
    kind: str = "disk"
    name: str = "disk"
    path: str = "???"  # a dataset directory in the format of DESIGN §3


# kind -> (config class, generator). A generator family adds one import above and one line here.
GENERATORS = {
    "ideal_point": (IdealPointConfig, make_ideal_point),
    "persona": (PersonaConfig, make_persona),
    "hh_rlhf": (HHRLHFConfig, make_hh_rlhf),
    "comparisons_table": (ComparisonsTableConfig, make_comparisons_table),
    "ratings_table": (RatingsTableConfig, make_ratings_table),
    "hidden_types": (HiddenTypesConfig, make_hidden_types),
    "cyclic_triplets": (CyclicTripletsConfig, make_cyclic_triplets),
    "cyclic_skew": (CyclicSkewConfig, make_cyclic_skew),
    "cyclic_users": (CyclicUsersConfig, make_cyclic_users),
    "multi_attribute": (MultiAttributeConfig, make_multi_attribute),
    "shared_plus_low_rank": (SharedPlusLowRankConfig, make_shared_plus_low_rank),
    "idiosyncratic": (IdiosyncraticConfig, make_idiosyncratic),
    "choice_panel": (ChoicePanelConfig, make_choice_panel),
    "tldr": (TLDRConfig, make_tldr),
    "ultrafeedback_p": (UltraFeedbackPConfig, make_ultrafeedback_p),
    "helpsteer2": (HelpSteer2Config, make_helpsteer2),
    "pickapic": (PickapicConfig, make_pickapic),
    "prism": (PrismConfig, make_prism),
}


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PLURALIGN_CACHE", pathlib.Path.home() / ".cache" / "pluralign"))


def load_dataset(config, cache_dir: str | os.PathLike | None = None) -> PreferenceDataset:
    """Reads the dataset a data config names (generating and caching synthetic data first)."""
    return read_dataset(dataset_path(config, cache_dir))


def dataset_path(config, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The directory of the dataset a data config names; a generated one is generated and
    cached there first."""
    if config.kind == "disk":
        return pathlib.Path(config.path)
    if config.kind not in GENERATORS:
        raise ValueError(f"unknown data kind {config.kind!r}; known: disk, {', '.join(sorted(GENERATORS))}")
    _, generate = GENERATORS[config.kind]
    fields = dataclasses.asdict(config)
    if hasattr(config, "source_fingerprint"):  # real data: the key follows the source files, not just their path
        fields["source_fingerprint"] = config.source_fingerprint()
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    path = pathlib.Path(cache_dir or default_cache_dir()) / "datasets" / f"{config.name}-{digest}"
    if not path.exists():
        ds = generate(config)
        try:
            write_dataset(path, ds.items, ds.comparisons, meta=ds.meta, prompts=ds.prompts, attributes=ds.attributes)
        except FileExistsError:  # another job of the same sweep wrote it first; the content is identical
            pass
    return path
