"""The append-only log of new users' answers that makes `pluralign serve` restartable.

Each acknowledged `POST /users/{id}/answers` is one JSON line, written with one `write` to a file
opened for appending and fsynced before the server replies: a record is on disk whole before its
client hears "ok", so a restart — after a crash or a `kill -9` — replays every acknowledged answer.
A process killed mid-write can leave a partial last line, which no client was told of: opening the
log drops it. A failed write (a full disk) is cut back off, so the log never holds a torn record
before a whole one. One server at a time appends: the log is locked while open.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
from typing import Any

ANSWERS_FILE = "serve/answers.jsonl"  # under the run directory, unless `--answers PATH`


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the new file's directory entry survives a crash too
    finally:
        os.close(fd)


class AnswerLog:
    """Records [{"user": id, "answers": [...]}, ...] read back at open, and `append` for new ones."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ValueError(f"answers log {self.path} is in use by another pluralign serve; "
                             "give this one its own with --answers PATH") from None
        if created:
            _fsync_dir(self.path.parent)
        self.records = self._read()

    def _read(self) -> list[dict[str, Any]]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a record torn by a kill mid-write: never acknowledged
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        records = []
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{self.path}:{number}: not a JSON record ({e}); the log was edited by hand?") from None
            if not isinstance(record, dict) or not {"user", "answers"} <= record.keys():
                raise ValueError(f"{self.path}:{number}: expected {{\"user\": ..., \"answers\": [...]}}, got {line[:80]!r}")
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Writes one record and syncs it to disk; on any failure the log is as it was."""
        line = json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except BaseException:
            os.ftruncate(self._fd, size)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1
