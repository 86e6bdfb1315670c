"""Where a run's dataset comes from: a directory on disk, or a built-in generator.

Generated datasets are written once to a cache directory keyed by a hash of their
configuration and then read back through `read_dataset`, so synthetic and real data
take exactly the same path into training (format, validation, memory mapping).
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import json
import os
import pathlib
import re

from pluralign.data.cyclic import (
    CyclicSkewConfig, CyclicTripletsConfig, CyclicUsersConfig, make_cyclic_skew, make_cyclic_triplets, make_cyclic_users,
)
from pluralign.data.format import DatasetError, PreferenceDataset, read_dataset, write_dataset
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
    path: str = "???"  # a dataset directory in the format of docs/design/data-format.md


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


# ----------------------------------------------------------------- own tables: checked up front
#
# An own table used to fail one missing column at a time, each run paying for the start-up.
# These checks read only the table's header and list every problem at once, each written in
# the syntax of the entry point that named it: `data.a=...` on the `pluralign` command line,
# `a=...` for `pluralign embed` and for Python keywords.

# The options of each table kind that name a column; None (an optional column left out) is skipped.
COLUMN_OPTIONS = {
    "comparisons": ("user", "a", "b", "label", "prompt", "weight"),
    "ratings": ("user", "item", "rating", "prompt"),
}


def table_columns(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV / TSV / JSONL / Parquet table, from its header (JSONL: the keys
    of its first 100 rows) without reading the rest."""
    path = pathlib.Path(path)
    suffixes = [x.lower() for x in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in (".gz", ".bz2", ".zst") and len(suffixes) > 1
    kind = suffixes[-2] if compressed else (suffixes[-1] if suffixes else "")
    try:
        if kind == ".parquet":
            import pyarrow.parquet as pq
            return list(pq.read_schema(path).names)
        if kind in (".csv", ".tsv"):
            import pyarrow.csv as pcsv
            parse = pcsv.ParseOptions(delimiter="\t" if kind == ".tsv" else ",")
            return list(pcsv.open_csv(path, parse_options=parse).schema.names)
        if kind in (".jsonl", ".json", ".ndjson"):
            opener = gzip.open if suffixes[-1] == ".gz" else open
            names: dict[str, None] = {}
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                for i, line in enumerate(f):
                    if i >= 100:
                        break
                    if line.strip():
                        names.update(dict.fromkeys(json.loads(line)))
            return list(names)
    except Exception as e:  # noqa: BLE001 (any unreadable header: the importer names the problem)
        raise DatasetError(path.name, f"cannot read its header: {e}") from e
    raise DatasetError(path.name, f"unknown table format {kind!r}: use .csv, .tsv, .jsonl or .parquet")


def column_problems(columns: list[str], named: dict[str, str | None], prefix: str = "") -> list[str]:
    """One line per option whose column is not in `columns`, with the likeliest column to name
    instead (`prefix` + option = column, the syntax of the entry point): a column holding the
    name as a word (`response_a` for `a`), else the closest spelling; each column guessed once."""
    problems = []
    free = [c for c in columns if c not in set(named.values())]
    for option, column in named.items():
        if column is None or column in columns:
            continue
        words = [c for c in free if column.lower() in re.split(r"[^a-z0-9]+", c.lower())]
        guess = words[:1] or difflib.get_close_matches(column, free, n=1, cutoff=0.5)
        if guess:
            free.remove(guess[0])
        hint = f"; did you mean {prefix}{option}={guess[0]}?" if guess else ""
        problems.append(f"{prefix}{option}={column}: no column '{column}'{hint}")
    return problems


def table_problems(path: str | None, table: str, named: dict[str, str | None], prefix: str = "",
                   files: dict[str, str | None] | None = None) -> list[str]:
    """Every problem of an own table that can be seen without reading it: a missing file, and
    every option that names no column of it (`table`: comparisons | ratings)."""
    problems = [f"{prefix}{option}={value}: no such file" for option, value in (files or {}).items()
                if value is not None and not pathlib.Path(value).expanduser().exists()]
    if path in (None, "", "???"):
        return [f"{prefix}path is not set: give the table with {prefix}path=FILE", *problems]
    if not pathlib.Path(path).expanduser().is_file():
        return [f"{prefix}path={path}: no such file", *problems]
    columns = table_columns(pathlib.Path(path).expanduser())
    wrong = column_problems(columns, {o: named[o] for o in COLUMN_OPTIONS[table] if o in named}, prefix)
    if wrong:
        problems += wrong + [f"({pathlib.Path(path).name} has the columns: {', '.join(columns)})"]
    return problems


def data_source_problems(config, option_prefix: str = "data.") -> list[str]:
    """What is wrong with an own-data config before anything is loaded: a dataset directory or
    table that does not exist, every column option that names no column of the table."""
    if config.kind == "disk":
        path = pathlib.Path(config.path).expanduser()
        if config.path in (None, "", "???"):
            return [f"{option_prefix}path is not set: give the dataset directory with {option_prefix}path=DIR"]
        return [] if path.is_dir() else [f"{option_prefix}path={config.path}: no such dataset directory"
                                         + (" (a table? use data=comparisons_table or data=ratings_table)" if path.is_file() else "")]
    table = {"comparisons_table": "comparisons", "ratings_table": "ratings"}.get(config.kind)
    if table is None:
        return []
    named = {o: getattr(config, o) for o in COLUMN_OPTIONS[table]}
    files = {"items_path": config.items_path, "prompts_path": config.prompts_path}
    return table_problems(config.path, table, named, option_prefix, files)


def problem_list(problems: list[str]) -> str:
    n = sum(not p.startswith("(") for p in problems)
    return f"{n} problem{'s' if n > 1 else ''}, all listed at once:\n  " + "\n  ".join(problems)


def check_data_source(config, option_prefix: str = "data.") -> None:
    """Raises DatasetError listing every problem of `data_source_problems` at once."""
    problems = data_source_problems(config, option_prefix)
    if problems:
        raise DatasetError(str(getattr(config, "path", config.kind)), problem_list(problems))


def check_embed_columns(config) -> None:
    """`pluralign embed`: every missing file or column of its input table at once (its options are
    top-level: `a=...`)."""
    named = {o: getattr(config, o) for o in COLUMN_OPTIONS.get(config.table, ())}
    problems = table_problems(config.input, config.table, named, "") if config.table in COLUMN_OPTIONS else []
    problems = [p.replace("path=", "input=", 1) if p.startswith("path") else p for p in problems]
    if problems:
        raise DatasetError(str(config.input), problem_list(problems))
