"""Start-up checks of every numeric option of a run, before any data is loaded or anything
is compiled: `model.n_prototypes=0`, `eval.inference_steps=-5` or `train.learning_rate=nan`
fail at once with the option's name, not later as a shape error or a NaN result.

Every int and float field of every config dataclass (model, data, train, eval) is checked,
including fields added later: a float must be finite, an int >= 0, unless the field's name
is given a stricter rule below. Lists of numbers are checked element by element.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# Counts and sizes: at least one.
AT_LEAST_ONE = {
    "n_prototypes", "latent_dim", "pair_dim", "n_atoms", "n_bins", "n_blocks", "n_attributes", "mlp_steps",
    "c_min", "c_max", "context_pool", "hidden", "encoder_hidden", "decoder_hidden", "gate_hidden",
    "n_users", "n_items", "comparisons_per_user", "dim", "n_groups", "n_types", "triplets_per_user",
    "traits_per_type", "statements_per_trait", "reuse", "max_comparisons", "max_pairs_per_user",
    "shots", "draws", "batch_size", "max_epochs", "eval_every",
}
# Scales, temperatures, concentrations and step sizes that divide or parametrise a distribution.
POSITIVE = {
    "max_logit_scale", "min_std", "min_concentration", "prior_alpha", "prior_beta", "mixture_concentration",
    "gate_temperature", "mlp_learning_rate", "inference_learning_rate", "block_decay",
}
NON_NEGATIVE = {
    "learning_rate", "weight_decay", "grad_clip", "variance_penalty", "entropy_coeff", "beta", "user_init_scale",
    "mlp_weight_decay", "noise_temperature", "nuisance_scale", "reward_scale", "signal_scale", "transitive_scale",
    "angle_jitter", "group_spread", "rating_noise", "user_spread", "sharpness", "off_gate", "verbosity_leak",
    "prior_strengths", "ridge_alphas", "decorrelation_threshold", "gate_loss_weight", "mu_clamp",
}
FRACTION = {  # in [0, 1]
    "min_user_fraction", "unseen_val_fraction", "unseen_test_fraction", "pair_val_fraction", "pair_test_fraction",
    "regression_val_fraction", "contrary_fraction", "label_noise", "controversial_fraction", "missing_fraction",
    "min_label_confidence",
}


def _number_problem(name: str, value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if name in AT_LEAST_ONE and value < 1:
        return "must be >= 1"
    if name in POSITIVE and not value > 0:
        return "must be > 0"
    if name in NON_NEGATIVE and value < 0:
        return "must be >= 0"
    if name in FRACTION and not 0 <= value <= 1:
        return "must be a fraction in [0, 1]"
    if isinstance(value, int) and value < 0:
        return "must be >= 0"
    return None


def config_problems(config: Any, section: str) -> list[str]:
    """`section.field: problem` for every numeric field of a config dataclass that is out of range."""
    problems = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            problem = _number_problem(field.name, v)
            if problem is not None:
                where = f"{section}.{field.name}" + (f"[{i}]" if isinstance(value, (list, tuple)) else "")
                problems.append(f"{where} = {v!r} {problem}")
                break
    pairs = [("c_min", "c_max", "<="), ("logvar_min", "logvar_max", "<")]
    for low, high, op in pairs:
        if hasattr(config, low) and hasattr(config, high):
            a, b = getattr(config, low), getattr(config, high)
            if not (a <= b if op == "<=" else a < b):
                problems.append(f"{section}.{low} = {a} must be {op} {section}.{high} = {b}")
    for first, second in (("unseen_val_fraction", "unseen_test_fraction"), ("pair_val_fraction", "pair_test_fraction")):
        if hasattr(config, first) and hasattr(config, second) and getattr(config, first) + getattr(config, second) >= 1:
            problems.append(f"{section}.{first} + {section}.{second} must be < 1 so that some remain for training")
    return problems


def check_run_config(config: Any) -> None:
    """Raises ValueError listing every out-of-range option of a `RunConfig` (and bad seeds)."""
    problems = [p for section in ("model", "data", "train", "eval") for p in config_problems(getattr(config, section), section)]
    seeds = list(config.seeds)
    if not seeds:
        problems.append("seeds is empty: give at least one training seed")
    elif any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        problems.append(f"seeds = {seeds} must be integers >= 0")
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds = {seeds} repeats a seed: every seed would train the same model")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))
