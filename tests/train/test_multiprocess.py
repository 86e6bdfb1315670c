"""Multi-process data parallelism (pluralign.train.distributed): two CPU processes joined by
JAX's own runtime (coordinator on 127.0.0.1, gloo collectives) train the same parameters as
one process, and only process 0 writes the run's files.

Each process is a subprocess running `pluralign.run.run`, the same entry the CLI uses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pluralign.data.synthetic import IdealPointConfig
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.pal import PALConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    run_dir, cache, expected_processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = RunConfig(
        model=PALConfig(name="pal_a", n_prototypes=3, latent_dim=4),
        data=IdealPointConfig(n_users=60, n_items=120, comparisons_per_user=30, dim=8, latent_dim=4, n_groups=3),
        train=TrainConfig(max_epochs=3, batch_size=64, learning_rate=1e-2, progress=False),
        eval=EvalConfig(shots=[1, 5], modes=["random"], draws=1, prior_strengths=[1.0]),
        seeds=[0, 1],
        cache_dir=cache,
    )
    results = run(config, run_dir)
    import jax
    assert jax.process_count() == expected_processes, jax.process_count()
    assert jax.device_count() == expected_processes  # one CPU device each, one mesh over both
    print("RESULT " + json.dumps({"process": jax.process_index(), "best_val_loss": results["train"]["best_val_loss"]}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR"))}
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_NUMPY_RANK_PROMOTION": "raise", "JAX_NUMPY_DTYPE_PROMOTION": "strict", "XLA_FLAGS": "", **extra}


def _results_line(stdout: str) -> dict:
    return json.loads(next(line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")))


@pytest.mark.slow
def test_two_processes_train_the_same_parameters_as_one(tmp_path):
    cache = str(tmp_path / "cache")
    one = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "one"), cache, "1"], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp_path / "two"), cache, "2"],
            env=_env(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    two = [_results_line(out) for out, _ in outs]
    assert sorted(r["process"] for r in two) == [0, 1]

    # Both processes end with the same parameters, equal to the one-process run's.
    reference = _results_line(one.stdout)["best_val_loss"]
    for r in two:
        np.testing.assert_allclose(r["best_val_loss"], reference, rtol=1e-5)
    from pluralign.export.artifact import load

    for seed in (0, 1):
        p1, p2 = (jax.tree.leaves(load(tmp_path / d, seed=seed).params) for d in ("one", "two"))
        assert len(p1) == len(p2)
        for a, b in zip(p1, p2):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

    # Only process 0 wrote the run's files: one metrics line per validation, not two.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "two" / "results.json").is_file()


def test_auto_joins_only_a_described_multi_process_job(monkeypatch):
    from pluralign.train import distributed

    for name in [k for k in os.environ if k.startswith(("SLURM_", "JAX_COORDINATOR"))]:
        monkeypatch.delenv(name)
    assert not distributed.requested("auto")  # a laptop, a plain process
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.requested("auto")  # one Slurm task per run (a sweep job): alone
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.requested("auto") and not distributed.requested("off")
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    assert distributed.requested("auto")
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    with pytest.raises(ValueError, match="no multi-process job"):
        distributed.requested("on")
    with pytest.raises(ValueError, match="train.distributed"):
        distributed.requested("sometimes")
