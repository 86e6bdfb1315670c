"""Structured-config schemas for Hydra: the library's dataclasses, registered by name.

Every YAML option in `pluralign/conf/` starts from one of these schemas, so a typo in
a key (`model.hiden=3`, `sed=1`) fails at composition instead of being ignored.
This module and `pluralign.cli` are the only places that import Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pluralign import rundir
from pluralign.data.embed_table import EmbedConfig
from pluralign.data.sources import GENERATORS, DiskDataConfig
from pluralign.embed.encoders import TransformersEncoderConfig, WordLlamaEncoderConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import REGISTRY
from pluralign.train.trainer import TrainConfig


@dataclasses.dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    seed: int = 0
    seeds: Optional[list[int]] = None
    cache_dir: Optional[str] = None


def schemas() -> dict[tuple[str, str], type]:
    """(config group, schema name) -> the dataclass that validates it ("" = the root)."""
    out = {("", "schema"): Config}
    for name, (_, config_cls) in REGISTRY.items():
        # One schema per config class: PAL-A and PAL-B share `schema_pal`.
        out[("model", f"schema_{config_cls.__name__.removesuffix('Config').lower()}")] = config_cls
    for kind, (config_cls, _) in GENERATORS.items():
        out[("data", f"schema_{kind}")] = config_cls
    out[("data", "schema_disk")] = DiskDataConfig
    out[("train", "schema")] = TrainConfig
    out[("eval", "schema")] = EvalConfig
    out[("", "embed_schema")] = EmbedConfig  # `pluralign embed` (conf/embed.yaml)
    out[("encoder", "schema_wordllama")] = WordLlamaEncoderConfig
    out[("encoder", "schema_hf")] = TransformersEncoderConfig
    return out


SCHEMAS = schemas()


def register_configs() -> None:
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group or None, name=name, node=node)
    # `pluralign --help` (conf/hydra/help/pluralign.yaml) lists the groups through this resolver.
    if not OmegaConf.has_resolver("pluralign_groups"):
        from pluralign.options import groups_help

        # string.Template (Hydra fills $FLAGS_HELP etc.) reads a bare $ as a placeholder.
        OmegaConf.register_new_resolver("pluralign_groups", lambda: groups_help().replace("$", "$$"))
    if not OmegaConf.has_resolver("pluralign_sqlite"):
        OmegaConf.register_new_resolver("pluralign_sqlite", sqlite_url)
    if not OmegaConf.has_resolver("pluralign_job_dir"):
        OmegaConf.register_new_resolver("pluralign_job_dir", job_dirname)


def job_dirname(*, _root_) -> str:
    """`${pluralign_job_dir:}` in conf/config.yaml: a sweep job's directory name, from the job's
    overrides, path values shortened (`pluralign.rundir.job_dirname`)."""
    naming = _root_.hydra.job.config.override_dirname
    return rundir.job_dirname(list(_root_.hydra.overrides.task), list(naming.exclude_keys), naming.kv_sep, naming.item_sep)


def sqlite_url(path: str) -> str:
    """`${pluralign_sqlite:DIR/optuna.db}` in conf/hydra/sweeper/tpe.yaml: the SQLAlchemy URL of
    an SQLite file, its folder created (Optuna creates the file, not the sweep directory)."""
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def model_config(name: str):
    """The model config that `model=<name>` selects, read from `conf/model/<name>.yaml` without
    composing a Hydra app (for scripts and tests); the config class's defaults where no file exists."""
    _, config_cls = REGISTRY[name]
    fields = {"name": name}
    path = pathlib.Path(__file__).parent / "conf" / "model" / f"{name}.yaml"
    if path.exists():
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        loaded.pop("defaults", None)
        fields.update(loaded)
    return config_cls(**fields)


def unknown_keys(cfg: DictConfig, where: str = "") -> list[str]:
    """`key: no such option ...` for every key of a composed config that its schema does not
    declare. A plain typo (`model.hiden=3`) already fails in Hydra; `+model.hiden=3` (Hydra's own
    hint for it) adds the key to the node instead, and `OmegaConf.to_object` would then drop it
    without a word."""
    problems = []
    schema = OmegaConf.get_type(cfg)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        path = f"{where}{key}"
        if key == "hydra" and not where:
            continue
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else ""
            problems.append(f"{path}: no such option of {schema.__name__}{hint}")
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            problems += unknown_keys(node, f"{path}.")
    return problems


def check_known_keys(cfg: DictConfig, see: str = "pluralign options GROUP/OPTION") -> None:
    """Raises ValueError listing every key no schema knows (see `unknown_keys`); `see` is where
    the user finds the real options."""
    problems = unknown_keys(cfg)
    if problems:
        raise ValueError("unknown config key(s), added with '+' but no schema has them, so they would be ignored:\n  "
                         + "\n  ".join(problems) + f"\n({see} lists every option with its meaning)")
