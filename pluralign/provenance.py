"""Where a result came from: the software, the machine and the command that produced it.

`provenance()` is written into every `results.json` and `model.json`, so a number in a
table can be traced to the pluralign version and git commit, the JAX / Flax / optax /
orbax versions, the platform and device, and the exact command line.
"""

from __future__ import annotations

import functools
import importlib.metadata
import pathlib
import platform
import subprocess
import sys


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit() -> str | None:
    """The commit of the pluralign source tree in use, with "-dirty" when it has local changes;
    None outside a git checkout (an installed wheel)."""
    source = pathlib.Path(__file__).resolve().parent.parent
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=5)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    import jax

    from pluralign import __version__

    devices = jax.devices()
    return {
        "pluralign": __version__,
        "git_commit": git_commit(),
        "versions": {name: package_version(name) for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": {"count": len(devices), "kind": devices[0].device_kind},
        "command": sys.argv,
    }
