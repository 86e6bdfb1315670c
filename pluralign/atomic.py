"""Files and directories that appear whole or not at all.

Every writer here fills a temporary sibling, ``.<name>.tmp-<pid>-<token>``, and renames it
into place, so a reader never sees a half-written file or directory:

* an exception while writing removes the temporary sibling and leaves the old version in
  place; an overwritten directory is first moved aside (``.<name>.old-<pid>-<token>``) and
  put back if the final rename fails;
* a process killed midway (no handler runs) leaves its siblings behind: the next write of
  the same path deletes those whose process is no longer alive.

Used by datasets (`pluralign.data.format`), JSON records (`pluralign.jsonio`), the embedding
chunk store (`pluralign.embed.extract`) and model artifacts (`pluralign.export.artifact`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pathlib
import secrets
import shutil
from typing import BinaryIO, Callable, Iterator


def _sibling(path: pathlib.Path, kind: str) -> pathlib.Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_leftovers(path: str | os.PathLike) -> None:
    """Deletes the temporary siblings of ``path`` (``.<name>.tmp-<pid>…``, ``.<name>.old-<pid>…``)
    that a write killed midway left, those of processes no longer alive."""
    path = pathlib.Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*-*"):
        kind, _, rest = leftover.name.removeprefix(f".{path.name}.").partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def write_file_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Calls ``write(f)`` on a temporary sibling of ``path`` opened for binary writing, syncs it
    to disk and renames it over ``path``."""
    path = pathlib.Path(path)
    remove_leftovers(path)
    tmp = _sibling(path, "tmp")
    try:
        with open(tmp, "xb") as f:  # mode from the umask, as any other file
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool) -> Iterator[pathlib.Path]:
    """Yields a new empty directory to fill; when the block ends without an exception it
    becomes ``path`` (replacing an existing one only with ``overwrite``, else FileExistsError),
    and with an exception it is deleted and ``path`` is untouched.

    Open memory maps of the replaced directory's files stay valid: unlinking keeps their inodes.
    """
    root = pathlib.Path(path).absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root)
    tmp = _sibling(root, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _rename_into_place(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_into_place(tmp: pathlib.Path, root: pathlib.Path, overwrite: bool) -> None:
    if not root.exists():
        try:
            os.rename(tmp, root)
            return
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not overwrite:  # a concurrent writer (e.g. a sweep job) got there first
                raise FileExistsError(f"{root} appeared while writing") from e
    if not overwrite:
        raise FileExistsError(f"{root} appeared while writing")
    old = _sibling(root, "old")
    os.rename(root, old)
    try:
        os.rename(tmp, root)
    except BaseException:
        os.rename(old, root)  # put the old version back
        raise
    shutil.rmtree(old, ignore_errors=True)
