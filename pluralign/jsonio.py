"""JSON files the project writes: numpy-aware encoding and atomic replacement."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import numpy as np

from pluralign.atomic import write_file_atomic


def json_default(x: Any) -> Any:
    """`json.dumps(default=...)` for numpy values (synthetic truth, metrics)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes to a temporary sibling, then renames: readers never see a half-written file.

    Refuses NaN and ±inf (which `json` would write as the non-JSON `NaN` / `Infinity`),
    naming where they are; a value that is undefined is written as null by the caller."""
    path = pathlib.Path(path)
    try:
        text = json.dumps(payload, indent=2, default=json_default, allow_nan=False)
    except ValueError:
        bad = non_finite_paths(json.loads(json.dumps(payload, default=json_default)))
        raise ValueError(f"{path}: refusing to write non-finite numbers at {', '.join(bad)}") from None
    write_file_atomic(path, lambda f: f.write(text.encode("utf-8")))


def non_finite_paths(x: Any, prefix: str = "") -> list[str]:
    """Dotted key paths of every NaN / ±inf float in a JSON-like tree."""
    if isinstance(x, float):
        return [] if math.isfinite(x) else [prefix or "<root>"]
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    return [p for key, value in items for p in non_finite_paths(value, f"{prefix}.{key}" if prefix else str(key))]


def nan_to_null(x: Any) -> Any:
    """The same JSON-like tree with every NaN float replaced by None (±inf are kept, and refused
    by `write_json_atomic`: an infinity is a fault, not an undefined value)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {key: nan_to_null(value) for key, value in x.items()}
    if isinstance(x, list):
        return [nan_to_null(value) for value in x]
    return x


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested config dicts as dotted keys."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
