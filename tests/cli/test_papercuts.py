"""CLI papercuts found by a new user: `--help` without JAX, `pluralign embed --help` and
one-line embed errors, `+key=` overrides no schema knows, own tables checked up front."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_module

from pluralign import cli
from pluralign.data.embed_table import EmbedConfig
from pluralign.data.format import DatasetError
from pluralign.data.importers import ComparisonsTableConfig, RatingsTableConfig
from pluralign.data.sources import DiskDataConfig, check_data_source, check_embed_columns


def _compose(overrides, name="config"):
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_help_lists_every_command_and_group():
    page = cli.help_page()
    for command in ("pluralign report", "pluralign embed", "pluralign options", "pluralign serve", "pluralign pairs"):
        assert command in page
    for group in ("model:", "data:", "train:", "eval:", "experiment:", "encoder:", "hydra/launcher:"):
        assert group in page
    assert "    pal_a " in page and "${" not in page


def test_help_answers_without_importing_jax():
    code = ("import sys, time; t = time.perf_counter(); sys.argv = ['pluralign', '--help']\n"
            "from pluralign.cli import main; main()\n"
            "assert 'jax' not in sys.modules and 'pluralign.run' not in sys.modules, 'heavy import'\n"
            "print('seconds', time.perf_counter() - t)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pluralign serve" in out.stdout
    print(f"pluralign --help: {wall:.2f} s wall (interpreter start included)")


def test_embed_help_is_its_own_page(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pluralign", "embed", "--help"])
    cli.main()
    page = capsys.readouterr().out
    assert page.startswith("usage: pluralign embed input=TABLE output=DIR")
    for option in ("input=???", "a=a", "label=label", "embed_with_prompt=false", "hf ", "wordllama "):
        assert option in page
    assert "model:" not in page and "hydra/launcher" not in page  # not the training groups


def test_a_plus_override_no_schema_knows_is_refused_like_a_typo():
    with pytest.raises(ValueError, match=r"model\.hiden: no such option of BTConfig; did you mean model\.hidden\?") as e:
        cli.run_config(_compose(["model=bt", "+model.hiden=3", "+sed=1"]))
    assert "sed: no such option of Config; did you mean seed?" in str(e.value)  # every one at once
    cli.run_config(_compose(["model=bt", "experiment=main"]))  # known keys pass


def _table(tmp_path, header="worker,response_a,response_b,p_a", name="prefs.csv"):
    path = tmp_path / name
    rows = ["u1,hi,ho,1", "u2,ha,he,0"] if header.count(",") == 3 else ["u1,hi,3", "u1,ho,1"]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_an_own_table_lists_every_missing_column_in_command_line_syntax(tmp_path):
    path = _table(tmp_path)
    with pytest.raises(DatasetError) as e:
        check_data_source(ComparisonsTableConfig(path=str(path)), option_prefix="data.")
    message = str(e.value)
    assert "4 problems" in message
    for line in ("data.user=user: no column 'user'", "data.a=a: no column 'a'; did you mean data.a=response_a?",
                 "data.b=b: no column 'b'; did you mean data.b=response_b?", "data.label=label: no column 'label'",
                 "has the columns: worker, response_a, response_b, p_a"):
        assert line in message
    # Named right, nothing is wrong.
    check_data_source(ComparisonsTableConfig(path=str(path), user="worker", a="response_a", b="response_b", label="p_a"))


def test_own_data_files_and_directories_are_checked_too(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.path=.*nope\.csv: no such file[\s\S]*data\.items_path=x\.npy: no such file"):
        check_data_source(ComparisonsTableConfig(path=str(tmp_path / "nope.csv"), items_path="x.npy"))
    ratings = _table(tmp_path, "user,item,score", name="ratings.csv")
    with pytest.raises(DatasetError, match=r"1 problem, .*\n  data\.rating=rating: no column 'rating'\n.*columns: user, item, score"):
        check_data_source(RatingsTableConfig(path=str(ratings)))
    with pytest.raises(DatasetError, match="no such dataset directory .a table\\? use data=comparisons_table"):
        check_data_source(DiskDataConfig(path=str(ratings)))


def test_embed_problems_use_its_own_syntax_and_exit_with_one_line(tmp_path, capsys):
    path = _table(tmp_path)
    with pytest.raises(DatasetError, match=r"\n  a=a: no column 'a'; did you mean a=response_a\?"):
        check_embed_columns(EmbedConfig(input=str(path), output=str(tmp_path / "ds")))
    cfg = _compose([f"input={path}", f"output={tmp_path / 'ds'}"], name="embed")
    with pytest.raises(SystemExit) as e:
        cli.embed_command(cfg)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("pluralign embed: error: ") and "Traceback" not in err
    assert "user=user: no column 'user'" in err and not (tmp_path / "ds").exists()


def test_runs_keep_compiled_programs_in_a_persistent_cache_a_user_can_move_or_turn_off(tmp_path, monkeypatch):
    """`pluralign` runs compile into `$PLURALIGN_CACHE/compiled` (the next run and a sweep's other jobs
    load the programs), unless JAX_COMPILATION_CACHE_DIR names another directory or
    PLURALIGN_JAX_CACHE=0."""
    import jax

    before, size = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_MAX_SIZE", raising=False)
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        cli.use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "compiled")
        assert jax.config.jax_compilation_cache_max_size == cli.JAX_CACHE_MAX_BYTES  # bounded: old entries go first
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # as JAX_COMPILATION_CACHE_DIR sets it
        cli.use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("PLURALIGN_JAX_CACHE", "0")
        cli.use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_compilation_cache_max_size", size)
