"""Every numeric option is checked at start-up, before data is loaded (pluralign.config_checks)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pluralign.config import model_config
from pluralign.config_checks import check_run_config
from pluralign.data.sources import GENERATORS, DiskDataConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import REGISTRY
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig


def base_config(**changes) -> RunConfig:
    config = RunConfig(model=model_config("pal_a"), data=DiskDataConfig(path="/nonexistent/dataset"),
                       train=TrainConfig(progress=False), eval=EvalConfig())
    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "n_prototypes", 0, "model.n_prototypes = 0 must be >= 1"),
    ("model", "latent_dim", -1, "model.latent_dim = -1 must be >= 1"),
    ("model", "hidden", [0], r"model.hidden\[0\] = 0 must be >= 1"),
    ("model", "max_logit_scale", 0.0, "model.max_logit_scale = 0.0 must be > 0"),
    ("eval", "inference_steps", -5, "eval.inference_steps = -5 must be >= 0"),
    ("eval", "min_user_fraction", 2.0, r"eval.min_user_fraction = 2.0 must be a fraction in \[0, 1\]"),
    ("eval", "inference_learning_rate", math.nan, "eval.inference_learning_rate = nan must be a finite number"),
    ("eval", "prior_strengths", [1.0, math.inf], r"eval.prior_strengths\[1\] = inf must be a finite number"),
    ("train", "learning_rate", math.nan, "train.learning_rate = nan must be a finite number"),
    ("train", "grad_clip", -1.0, "train.grad_clip = -1.0 must be >= 0"),
])
def test_an_out_of_range_option_fails_at_start_up_naming_it(tmp_path, section, field, value, message):
    config = base_config()
    setattr(getattr(config, section), field, value)  # as Hydra would hand it over (no __post_init__ re-run)
    with pytest.raises(ValueError, match=message):
        run(config, tmp_path / "run")  # the data path does not exist: the config is refused first
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seeds, message", [([], "seeds is empty"), ([0, 0], "repeats a seed"),
                                            ([-1], "integers >= 0")])
def test_seeds_must_be_distinct_and_present(seeds, message):
    with pytest.raises(ValueError, match=message):
        check_run_config(base_config(seeds=seeds))


def every_config():
    """(section, an instance) of every config dataclass a run can be given."""
    models = {id(cfg_cls): name for name, (_, cfg_cls) in REGISTRY.items()}
    yield from (("model", model_config(name)) for name in models.values())
    yield from (("data", cls()) for cls, _ in GENERATORS.values())
    yield "train", TrainConfig()
    yield "eval", EvalConfig()


@pytest.mark.parametrize("section, config", list(every_config()), ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_every_numeric_field_of_every_config_is_checked(section, config):
    check_run_config(base_config(**{section: config}))  # the defaults are valid
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        element = value[0] if isinstance(value, list) and value else value
        if isinstance(element, bool) or not isinstance(element, (int, float)):
            continue
        bad = math.nan if isinstance(element, float) else -1
        copy = dataclasses.replace(config)
        object.__setattr__(copy, field.name, [bad, *value[1:]] if isinstance(value, list) else bad)
        with pytest.raises(ValueError, match=f"{section}.{field.name}"):
            check_run_config(base_config(**{section: copy}))
