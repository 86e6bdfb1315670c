"""`pluralign` run as a user runs it: a subprocess of the console entry point, under the tests'
strict JAX promotion rules (they hold in the child too)."""

from __future__ import annotations

import os
import subprocess
import sys


COMMAND = [sys.executable, "-m", "pluralign.cli"]


def cli_env(extra: dict | None = None) -> dict:
    """This process's environment, strict promotion, and `extra`."""
    return {**os.environ, "JAX_NUMPY_RANK_PROMOTION": "raise", "JAX_NUMPY_DTYPE_PROMOTION": "strict", **(extra or {})}


def run_pluralign(args: list[str], cwd, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m pluralign.cli *args` in `cwd`, with `env` added to this process's environment."""
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=timeout)
