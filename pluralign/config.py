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

from pluralign.data.sources import GENERATORS, DiskDataConfig
from pluralign.embed.encoders import TransformersEncoderConfig, WordLlamaEncoderConfig
from pluralign.embed.extract import EmbedConfig
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


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    schemas = {}
    for name, (_, config_cls) in REGISTRY.items():
        schemas.setdefault(config_cls, name)
    for config_cls in schemas:
        # One schema per config class: PAL-A and PAL-B share `schema_pal`.
        cs.store(group="model", name=f"schema_{config_cls.__name__.removesuffix('Config').lower()}", node=config_cls)
    for kind, (config_cls, _) in GENERATORS.items():
        cs.store(group="data", name=f"schema_{kind}", node=config_cls)
    cs.store(group="data", name="schema_disk", node=DiskDataConfig)
    cs.store(group="train", name="schema", node=TrainConfig)
    cs.store(group="eval", name="schema", node=EvalConfig)
    cs.store(name="embed_schema", node=EmbedConfig)  # `pluralign embed` (conf/embed.yaml)
    cs.store(group="encoder", name="schema_wordllama", node=WordLlamaEncoderConfig)
    cs.store(group="encoder", name="schema_hf", node=TransformersEncoderConfig)


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
