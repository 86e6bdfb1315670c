"""Data parallelism across processes and hosts with JAX's own runtime (docs/design/architecture.md, Training).

One code path for one CPU, one GPU, several GPUs of a host and several hosts. Every
process runs the same program (multi-controller SPMD): the trainer's `Mesh` spans the
devices of *all* processes along one `data` axis; the training comparisons' index arrays
and the embedding tables are replicated (indices are 20 bytes a comparison); each global
batch is split along its rows over the `data` axis, so each device gathers embeddings for
and differentiates only its own rows, and XLA inserts the gradient all-reduce. Because the
epoch's permutation is drawn from the same key everywhere, a run on N processes trains the
same parameters as a run on one (up to the summation order of the all-reduce).

Joining a job (`initialize`, called by `pluralign.run` before any JAX computation), by
`train.distributed`:

  auto  join when the environment describes a multi-process job, else run alone:
        - JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and JAX_PROCESS_ID
          (any launcher; e.g. two processes on one machine for a test), or
        - a Slurm step with more than one task (SLURM_NTASKS > 1): JAX's own Slurm
          detection takes the coordinator from the step's first node, the process
          count and id from SLURM_NTASKS / SLURM_PROCID and one GPU per task from
          SLURM_LOCALID (device 0 when Slurm binds one GPU per task, as
          `gpus_per_task=1` does). This is what the submitit launcher gives with
          `hydra.launcher.tasks_per_node=<GPUs per node> hydra.launcher.gpus_per_task=1`.
  on    always join (an error if neither of the above is set)
  off   never (a Slurm job step with several tasks then runs independent copies)

After training the state is brought back to each process's own device: evaluation runs
on every process (same inputs, same result) and only process 0 writes files
(`is_primary`). Checkpoints are written by orbax, which coordinates the processes itself.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("auto", "on", "off")


def requested(mode: str) -> bool:
    """Whether this process should join a multi-process job under `train.distributed=mode`."""
    if mode not in MODES:
        raise ValueError(f"train.distributed must be one of {list(MODES)}, got {mode!r}")
    if mode == "off":
        return False
    from_env = "JAX_COORDINATOR_ADDRESS" in os.environ
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ
    if mode == "on" and not (from_env or slurm_tasks):
        raise ValueError(
            "train.distributed=on but no multi-process job is described: set JAX_COORDINATOR_ADDRESS=host:port, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or launch one task per device under Slurm (SLURM_NTASKS > 1)"
        )
    return from_env or slurm_tasks


def initialize(mode: str = "auto") -> bool:
    """Joins the multi-process job if `mode` asks for one; returns whether this process is in one.

    Must run before any JAX computation of the process. Idempotent.
    """
    if not requested(mode):
        return False
    if not jax.distributed.is_initialized():
        explicit = {}
        if "JAX_NUM_PROCESSES" in os.environ or "JAX_PROCESS_ID" in os.environ:
            try:
                explicit = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                            "process_id": int(os.environ["JAX_PROCESS_ID"])}
            except (KeyError, ValueError) as e:
                raise ValueError(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must both be integers ({e})") from e
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        if len(visible) == 1 and "JAX_LOCAL_DEVICE_IDS" not in os.environ:
            # Slurm bound one GPU to this task (gpus_per_task=1): it is device 0 here, not the
            # SLURM_LOCALID that JAX's Slurm detection would otherwise pick.
            explicit["local_device_ids"] = [0]
        jax.distributed.initialize(**explicit)  # coordinator from JAX_COORDINATOR_ADDRESS or Slurm
    return True


def is_primary() -> bool:
    """True on the process that writes results, logs and exports (process 0)."""
    return jax.process_index() == 0


def wait_for_all(name: str) -> None:
    """A barrier over all processes (no-op alone): e.g. the others wait while process 0 writes
    the run's files, so that no process leaves the job while another still needs it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicate(tree, mesh: Mesh | None):
    """Every leaf as one global array replicated over `mesh` (the same value on every process).

    With several processes, a jitted program over the mesh takes only global arrays; each
    process contributes its own copy of the (identical) value. No-op without a mesh.
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def local(tree):
    """Replicated global arrays back as arrays on this process's first device (for evaluation,
    which every process runs alone); arrays that are already local pass through."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    return jax.tree.map(one, tree)
