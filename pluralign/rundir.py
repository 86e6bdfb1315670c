"""What keeps a run directory consistent: one writer at a time, and named points where tests
inject a crash.

One writer: `pluralign.run.run` holds an exclusive lock on `<run_dir>/.lock` while it works.
A second process on the same directory is refused with the holder's pid and host instead of
interleaving `metrics.jsonl` and overwriting the first one's results. The lock is a POSIX
record lock (`fcntl.lockf`): the kernel drops it when its process dies, however it dies, so a
lock left by a killed run is simply taken over (the file stays; only the lock on it counts),
and it works on NFS, where sweeps on a cluster keep their run directories.

Fault points: `fault_point("name")` marks a moment of the run (between writing the model and
the results, mid-training, ...). A test kills the process there by setting
`PLURALIGN_FAULT=name` (`os._exit`, as abrupt as SIGKILL: no cleanup runs) or, in-process, by
setting `fault_hook` to a function that raises.

Job names: a sweep job's directory is named by its own overrides (`job_dirname`), so re-running
the sweep finds it again; a path-valued override (`data.path=/data/sets/mine`) is written as
its last component plus a hash of the whole value (`data.path=mine-3f1c9a2b`), never as nested
folders. The full value stays in the job's `.hydra/overrides.yaml` and `results.json` config.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pathlib
import re
import socket
import threading
from typing import Callable, Iterator

LOCK_FILE = ".lock"
FAULT_ENV = "PLURALIGN_FAULT"
FAULT_EXIT_CODE = 137  # what a shell reports for SIGKILL

# In-process fault injection for tests: called with the point's name at every fault point.
fault_hook: Callable[[str], None] | None = None


def fault_point(name: str) -> None:
    """A named moment where tests may crash the run (see the module docstring); a no-op otherwise."""
    if fault_hook is not None:
        fault_hook(name)
    if os.environ.get(FAULT_ENV) == name:
        os._exit(FAULT_EXIT_CODE)


class RunDirLocked(RuntimeError):
    """Another live process is writing to this run directory."""


# POSIX locks belong to a process, so two threads (or two `run` calls) of one process would
# not exclude each other through fcntl: they are kept apart here.
_held: set[pathlib.Path] = set()
_held_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(run_dir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Holds the run directory's lock for the duration of the block; raises `RunDirLocked`
    (naming the holder) if another process or another call of this process holds it."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    key = path.resolve()
    with _held_guard:
        if key in _held:
            raise RunDirLocked(f"{run_dir}: already in use by this process (pid {os.getpid()}); one run per directory")
        _held.add(key)
    fd, locked = None, False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise RunDirLocked(f"{path}: cannot lock ({e}); this filesystem may not support file locks") from e
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
            raise RunDirLocked(
                f"{run_dir}: another run is writing to this directory ({holder}, lock file {path}). "
                "Wait for it to finish or stop it; two runs in one directory would overwrite each other."
            ) from None
        locked = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield run_dir
    finally:
        if fd is not None:
            if locked:
                os.ftruncate(fd, 0)  # the holder line names only live holders
            os.close(fd)  # releases the lock; the file stays, so no one can lock a replaced inode
        with _held_guard:
            _held.discard(key)


# A name component longer than ~255 bytes cannot be created on most filesystems.
MAX_JOB_NAME = 200


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def override_key(line: str) -> str:
    """The key of a command-line override as Hydra's `key_or_group` gives it (`+model.x=3` -> `model.x`)."""
    return line.split("=", 1)[0].lstrip("+~")


def short_value(value: str) -> str:
    """A path-valued override value -> `<last component>-<hash of the whole value>`, safe as one
    directory name; any other value unchanged."""
    if "/" not in value and "\\" not in value:
        return value
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", re.split(r"[/\\]", value.rstrip("/\\"))[-1])[:40].strip("_.") or "path"
    return f"{stem}-{_digest(value)}"


def job_dirname(overrides: list[str], exclude_keys: list[str] = (), kv_sep: str = "=", item_sep: str = ",") -> str:
    """A sweep job's directory name from its overrides: Hydra's `override_dirname` (sorted
    `key=value` joined by `,`, excluded keys left out), except that path-valued values are
    shortened (`short_value`) and an over-long name keeps its head plus a hash of the whole. Jobs
    without path values keep exactly the name Hydra gives them, so older sweeps resume."""
    lines = sorted(line for line in overrides if override_key(line) not in set(exclude_keys))
    items = []
    for line in lines:
        key, sep, value = line.partition("=")
        items.append(f"{key}{kv_sep}{short_value(value)}" if sep else line)
    name = item_sep.join(items)
    if len(name.encode()) > MAX_JOB_NAME:
        name = f"{name.encode()[:MAX_JOB_NAME - 9].decode(errors='ignore')}-{_digest(name)}"
    return name
