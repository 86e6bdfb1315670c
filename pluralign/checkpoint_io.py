"""Every orbax read and write of the project goes through here (training checkpoints and the
model artifact), so that they work in any directory a Hydra run or sweep can be given:
`save_pytree`/`restore_pytree` for one checkpoint directory (the artifact), and
`checkpoint_manager` with `save_step`/`restore_latest` for the numbered checkpoints of a run.

Why an alias: orbax finds its per-process OCDBT files with `etils.epath.Path.glob`, which
globs the *whole* path string, not only the pattern. A run directory named by its overrides
(`seeds=[0,1]`, `model.hidden=[64,64]`) contains a bracket expression, which glob reads as a
character class: the per-process files are never found, orbax skips merging them and
writes a checkpoint that cannot be restored ("NOT_FOUND ... leaves.0/.zarray"). A path with
a glob character is therefore handed to orbax through a symbolic link of a plain name in the
temporary directory; the files themselves are written where they belong.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import tempfile
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp


@contextlib.contextmanager
def orbax_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """An absolute path to `path` (existing or not) that orbax can use whatever its name holds:
    `path` itself when it has no glob character, else the same location through a symlink to
    its parent, removed on exit."""
    path = pathlib.Path(path).absolute()
    if not glob.has_magic(str(path)):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    alias_root = pathlib.Path(tempfile.mkdtemp(prefix="pluralign-orbax-"))
    if glob.has_magic(str(alias_root)):
        raise RuntimeError(f"the temporary directory {alias_root} itself has a glob character ([, *, ?); set TMPDIR")
    link = alias_root / "d"
    os.symlink(path.parent, link, target_is_directory=True)
    try:
        yield link / path.name
    finally:
        link.unlink()
        alias_root.rmdir()


def save_pytree(path: str | os.PathLike, payload: Any) -> None:
    """Writes a pytree of host arrays as one orbax checkpoint directory at `path` (complete on
    return), from this process alone: in a multi-process run, process 0 exports the artifact."""
    this_process = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()})
    with orbax_path(path) as target, ocp.StandardCheckpointer(multiprocessing_options=this_process) as checkpointer:
        checkpointer.save(target, payload)
        checkpointer.wait_until_finished()


def restore_pytree(path: str | os.PathLike, target: Any) -> Any:
    """Reads a checkpoint written by `save_pytree` into the structure, shapes and dtypes of `target`."""
    with orbax_path(path) as source, ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(source, target)


@contextlib.contextmanager
def checkpoint_manager(directory: str | os.PathLike, max_to_keep: int = 2) -> Iterator[ocp.CheckpointManager]:
    """An orbax CheckpointManager over `directory` (created if missing), closed on exit, also on
    errors (its background threads must stop)."""
    with orbax_path(directory) as target:
        manager = ocp.CheckpointManager(target, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
        try:
            yield manager
        finally:
            manager.close()


def save_step(manager: ocp.CheckpointManager, step: int, payload: Any) -> None:
    """Saves `payload` (a pytree of arrays) as checkpoint `step` of `manager`."""
    manager.save(step, args=ocp.args.StandardSave(payload))


def abstract(tree: Any) -> Any:
    """The shapes, dtypes and shardings of a pytree of arrays: a restore target that allocates nothing."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> Any:
    """The latest checkpoint of `manager`, read into the structure, shapes and dtypes of `target`."""
    return manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
