"""The ledger's write-ahead spool: every spend record is appended to a local file before the answer
it describes reaches the client, so neither a crash of the gateway nor an outage of the database
loses a record.

Records go to the current segment with one unbuffered `write` each (about 3 µs; the bytes are in
the kernel once it returns, so a `kill -9` cannot lose them). Each sealed segment is fsynced before
it is drained, off the request path, so a power cut (unlike a crash) can lose at most the records of
one flush interval. The drainer seals the segment (new records go to a fresh one),
copies sealed segments into the database and deletes them only once committed. A segment is locked
(`flock`) by whoever writes or drains it, so replicas sharing a state directory never drain a segment
that is still written, and segments left by a crashed process are drained by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from gateway.accounting.record import SpendRecord

logger = logging.getLogger("gateway.accounting.spool")

_SUFFIX = ".jsonl"


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._names = itertools.count()
        self._fd = -1
        self._path: Path | None = None
        self._written = False
        self._open_segment()

    def _open_segment(self) -> None:
        # Named so that segments sort in writing order: time first, then this process and sequence.
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._names):06d}{_SUFFIX}"
        path = self.directory / name
        # Created under a name drainers ignore and locked before it gets its real name: a drainer
        # must never claim (and delete) a segment that is about to be written.
        hidden = self.directory / f".{name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(hidden, path)
        self._fd, self._path, self._written = fd, path, False

    @property
    def current(self) -> Path | None:
        """The segment being written."""
        return self._path

    def append(self, record: SpendRecord) -> None:
        os.write(self._fd, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self._written = True

    def seal(self) -> int | None:
        """Start a new segment so the current one can be drained; nothing to do if it is empty.
        Returns the old segment's descriptor, still locked: pass it to `release` (which blocks on
        the disk, so from a worker thread)."""
        if not self._written:
            return None
        old = self._fd
        self._open_segment()
        return old

    @staticmethod
    def release(sealed: int) -> None:
        os.fsync(sealed)
        os.close(sealed)  # releases its lock: it may now be drained

    def sealed(self) -> list[Path]:
        """Segments ready to drain, oldest first: not being written by any live process."""
        return sorted(path for path in self.directory.glob(f"*{_SUFFIX}") if path != self._path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._path is not None and not self._written:
                self._path.unlink(missing_ok=True)


@contextlib.contextmanager
def claimed(path: Path, known: list[SpendRecord] | None = None) -> Iterator[list[SpendRecord] | None]:
    """The records of a sealed segment, with the segment locked so no other drainer takes it too;
    None when another process holds it (it is still writing or draining it). `known`: its records as
    the writer still holds them, so the file need not be read back."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # another drainer finished it
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another drainer may have finished and deleted it between our open and our lock.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                yield None
                return
        except (BlockingIOError, FileNotFoundError):
            yield None
            return
        if known is not None:
            yield known
            return
        with open(fd, "rb", closefd=False) as segment:
            yield list(_parse(path, segment.read()))
    finally:
        os.close(fd)


def _parse(path: Path, data: bytes) -> Iterator[SpendRecord]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line:
            continue
        try:
            yield SpendRecord.from_json(orjson.loads(line))
        except (orjson.JSONDecodeError, TypeError):
            # Only a write torn by a power cut can leave this; the rest of the segment is good.
            logger.error("%s:%d: unreadable spend record skipped", path, number)
