"""Preference models sharing one surface (see `pluralign.models.base`)."""

from __future__ import annotations

from pluralign.models.base import (
    Dims,
    PairBatch,
    PairEmbeddings,
    PreferenceModel,
    Tables,
    gather,
    init,
    logits,
    loss,
    mean_preference_loss,
    preference_loss,
    reward,
    seen_logits,
)
from pluralign.models.bt import BT, BTConfig
from pluralign.models.dpl import DPLCategorical, DPLConfig, DPLMeanVariance
from pluralign.models.dprm import DPRM, DPRMConfig
from pluralign.models.gpm import GPM, GPMConfig
from pluralign.models.pal import PALA, PALB, PALConfig
from pluralign.models.vpl import VPL, VPLConfig
from pluralign.models.dpa import DPA, DPAConfig
from pluralign.models.linear import LinearBT, LinearConfig, LinearPersonal
from pluralign.models.lore import LoRe, LoReConfig
from pluralign.models.residual import BTResidual, BTResidualConfig

# name -> (model class, config class). A model family adds one import above and one line here;
# `pluralign.config` then registers its schema and `conf/model/<name>.yaml` selects it.
REGISTRY = {
    "bt": (BT, BTConfig),
    "pal_a": (PALA, PALConfig),
    "pal_b": (PALB, PALConfig),
    "dpl_mv": (DPLMeanVariance, DPLConfig),
    "dpl_cat": (DPLCategorical, DPLConfig),
    "dprm": (DPRM, DPRMConfig),
    "vpl": (VPL, VPLConfig),
    "dpa": (DPA, DPAConfig),
    "gpm": (GPM, GPMConfig),
    "gpm_personal": (GPM, GPMConfig),
    "linear_bt": (LinearBT, LinearConfig),
    "linear_personal": (LinearPersonal, LinearConfig),
    "lore": (LoRe, LoReConfig),
    "bt_residual": (BTResidual, BTResidualConfig),
}


def model_class(name: str):
    try:
        return REGISTRY[name][0]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(REGISTRY)}") from None
