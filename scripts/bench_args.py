"""Command-line options shared by the benchmark scripts (``scripts/bench_*.py``).

`parse_args(__doc__, users=1_000, dim=(1024, "help"), ...)` gives each keyword a ``--users``-style
option (underscores become dashes) whose type is that of its default; a list default takes one
or more values. The scripts run as ``python scripts/bench_x.py``, so this folder is on the path.
"""

from __future__ import annotations

import argparse
from typing import Any


def parse_args(doc: str | None, **options: Any) -> argparse.Namespace:
    """Parses ``--option value`` for each keyword; a value ``(default, help)`` gives a help text."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    for name, spec in options.items():
        default, help_text = spec if isinstance(spec, tuple) else (spec, None)
        kind = type(default[0]) if isinstance(default, list) else type(default)
        parser.add_argument("--" + name.replace("_", "-"), default=default, help=help_text,
                            type=str if default is None else kind, nargs="+" if isinstance(default, list) else None)
    return parser.parse_args()

