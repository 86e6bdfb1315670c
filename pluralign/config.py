"""Structured-config schemas for Hydra: the library's dataclasses, registered by name.

Every YAML option in `pluralign/conf/` starts from one of these schemas, so a typo in
a key (`model.hiden=3`, `sed=1`) fails at composition instead of being ignored.
This module and `pluralign.cli` are the only places that import Hydra.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

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
