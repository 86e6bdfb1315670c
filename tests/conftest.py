"""Shared test setup: loud broadcasting errors and a tiny planted-structure dataset."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# JAX's persistent compilation cache for the whole test session and the subprocesses it spawns
# (they inherit os.environ): every test builds its own model and jitted step, so the same small
# programs come back again and again; with the cache each is compiled once per run. The cache is
# a fresh temporary directory per run (a clean clone still starts cold, a stale cache can never
# hide a change), removed at exit by the process that made it; pytest-xdist workers inherit the
# controller's. Set before jax is imported: jax reads these variables at import time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = tempfile.mkdtemp(prefix="pluralign-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every program, not only slow ones
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")  # and every size
# Tests spend more CPU compiling than running their small programs: XLA:CPU's LLVM backend at -O0
# (jax_disable_most_optimizations; the HLO passes, fusion included, still run) cuts the fast tier's
# CPU time by about a quarter (463 s -> 357 s user on 2 cores) and the subprocesses inherit it.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite fully optimised, as the library runs. A test that
# compares two compiled programs bit for bit is marked `xla_optimized` and runs optimised (below):
# whether two programs agree to the last bit depends on the optimisation level.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's MLIR fusion emitters take longer to compile a small program than the classic elemental
# emitters: with them off, an eager op compiles in ~12 ms instead of ~20, a jax.random.normal in ~60
# instead of ~95, and the fast tier takes ~95 s instead of ~130 on 2 cores (issue 24). The library
# itself keeps XLA's defaults; subprocesses inherit the flag. A flag already in XLA_FLAGS wins.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# In case a plugin imported jax before this file: the same settings, for this process.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

# Implicit rank promotion hides broadcasting bugs ([B] against [B, 1] silently gives [B, B]);
# implicit dtype promotion hides precision bugs (a float16 table times a float32 weight, an
# int index mixed into float math): both raise in tests (equinox's and levanter's conftest).
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True)
def _xla_optimized(request):
    """`@pytest.mark.xla_optimized`: this test compiles with XLA's full optimisations (the library's
    setting), whatever the session's. The flag is not part of jit's in-memory cache key, so the
    caches are cleared on the way in and out (the persistent cache keys on it: nothing stale)."""
    if request.node.get_closest_marker("xla_optimized") is None or not jax.config.read("jax_disable_most_optimizations"):
        yield
        return
    jax.config.update("jax_disable_most_optimizations", False)
    jax.clear_caches()
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
        jax.clear_caches()


@pytest.fixture(scope="session")
def tiny_dataset():
    """60 users in 3 groups, 200 items, D = 16: small enough to train in a second."""
    from pluralign.data.synthetic import IdealPointConfig, make_ideal_point

    return make_ideal_point(
        IdealPointConfig(n_users=60, n_items=200, comparisons_per_user=40, dim=16, latent_dim=4, n_groups=3, seed=0)
    )


@pytest.fixture(scope="session")
def vpl_two_types(tmp_path_factory):
    """A VPL trained by `run.run` on 2 hidden annotator types (200 users, checkpointed), shared by
    the VPL and active-elicitation tests: {config, results, run_dir}."""
    from pluralign.data.hidden_types import HiddenTypesConfig
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.vpl import VPLConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    root = tmp_path_factory.mktemp("vpl_two_types")
    config = RunConfig(
        model=VPLConfig(beta_warmup_steps=100),
        data=HiddenTypesConfig(n_types=2, n_users=200, n_items=300, comparisons_per_user=40, dim=16, seed=1),
        train=TrainConfig(progress=False, max_epochs=12, batch_size=128, learning_rate=0.01, patience=12),
        eval=EvalConfig(shots=[1, 8], modes=["random"], draws=1, prior_strengths=[1.0], pair_test_fraction=0.2,
                        unseen_test_fraction=0.3),
        cache_dir=str(root / "cache"),
    )
    return {"config": config, "results": run(config, root / "run"), "run_dir": root / "run"}
