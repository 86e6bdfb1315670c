"""JSON files the project writes: numpy-aware encoding and atomic replacement."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np


def json_default(x: Any) -> Any:
    """`json.dumps(default=...)` for numpy values (synthetic truth, metrics)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes to a temporary sibling, then renames: readers never see a half-written file."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=json_default))
    os.replace(tmp, path)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested config dicts as dotted keys."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
