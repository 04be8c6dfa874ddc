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

Intents: before an upstream is called, the request's *intent* goes to the spool too: the record to
keep if the process dies before the request ends (status 500, `interrupted`, its estimated cost),
under the id its real record will have. A writer drains only its own segments and those of writers
that are gone: each writer holds a lease (a `flock`ed file named after it) for as long as it lives,
and the kernel lets go of it when the process dies, `kill -9` included. A live writer carries the
intents still open into each new segment, so an intent is resolved in the segment that also holds
its record; in a dead writer's newest segment, an intent without its record is an interrupted
request, and goes into the ledger as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.ledger.record import SpendRecord

logger = logging.getLogger("gateway.ledger.spool")

_SUFFIX = ".jsonl"
_LEASE = ".lease"


@dataclass(frozen=True, slots=True)
class Intent:
    """A request about to call an upstream: `fields` are those of the record the ledger keeps if it
    never ends (a plain dict, spooled as it is: this is written for every upstream call)."""

    fields: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.fields["id"])

    @property
    def record(self) -> SpendRecord:
        return SpendRecord.from_json(self.fields)

    @classmethod
    def of(cls, record: SpendRecord) -> Intent:
        return cls(record.as_json())


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        # Random per process: a restarted gateway is another writer even with the same pid (pid 1).
        self.writer = os.urandom(6).hex()
        self._names = itertools.count()
        self._lease = _locked_new_file(directory, f".{self.writer}{_LEASE}", os.O_RDONLY)
        self._fd = -1
        self._path: Path | None = None
        self._written = False
        self._open_segment()

    def _open_segment(self) -> None:
        # Named so that segments sort in writing order: time first, then the writer and sequence.
        name = f"{time.time_ns():020d}-{self.writer}-{next(self._names):06d}{_SUFFIX}"
        fd = _locked_new_file(self.directory, name, os.O_WRONLY | os.O_APPEND)
        self._fd, self._path, self._written = fd, self.directory / name, False

    @property
    def current(self) -> Path | None:
        """The segment being written."""
        return self._path

    def append(self, record: SpendRecord) -> None:
        os.write(self._fd, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self._written = True

    def append_intent(self, intent: Intent) -> None:
        os.write(self._fd, b'{"intent":' + orjson.dumps(intent.fields) + b"}\n")
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
        """Segments this spool may drain, oldest first: its own sealed ones, and all those of writers
        that are gone (another live writer drains its own)."""
        alive: dict[str, bool] = {self.writer: True}
        drainable = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            writer = writer_of(path)
            if writer not in alive:
                alive[writer] = _lease_held(self.directory / f".{writer}{_LEASE}")
            if path != self._path and (writer == self.writer or not alive[writer]):
                drainable.append(path)
        return sorted(drainable)

    def is_own(self, path: Path) -> bool:
        return writer_of(path) == self.writer

    def is_newest_of_its_writer(self, path: Path) -> bool:
        """No later segment of the same writer is left (a dead writer's intents resolve there)."""
        writer = writer_of(path)
        return all(
            other.name <= path.name
            for other in self.directory.glob(f"*{_SUFFIX}")
            if writer_of(other) == writer
        )

    def forget_gone_writers(self) -> None:
        """Drop the leases of writers that are gone and left no segment."""
        writers = {writer_of(path) for path in self.directory.glob(f"*{_SUFFIX}")}
        for lease in self.directory.glob(f".*{_LEASE}"):
            writer = lease.name[1 : -len(_LEASE)]
            if writer != self.writer and writer not in writers and not _lease_held(lease):
                lease.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._path is not None and not self._written:
                self._path.unlink(missing_ok=True)
        if self._lease >= 0:
            os.close(self._lease)
            self._lease = -1
            (self.directory / f".{self.writer}{_LEASE}").unlink(missing_ok=True)


def writer_of(path: Path) -> str:
    """The writer in a segment's name (`TIME-WRITER-SEQUENCE.jsonl`; older gateways wrote their pid)."""
    parts = path.name.removesuffix(_SUFFIX).split("-")
    return "-".join(parts[1:-1])


def _locked_new_file(directory: Path, name: str, mode: int) -> int:
    """A new file, locked before it gets its name: a drainer must never claim (and delete) a segment
    that is about to be written, nor take a lease that is about to be held for a dead one's."""
    hidden = directory / f".{name}.new"
    fd = os.open(hidden, mode | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(hidden, directory / name)
    return fd


def _lease_held(lease: Path) -> bool:
    """Whether a live process holds this lease; a missing lease is a writer that is gone."""
    try:
        fd = os.open(lease, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def claimed(
    path: Path, known: list[SpendRecord] | None = None
) -> Iterator[list[SpendRecord | Intent] | None]:
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
            yield list(known)
            return
        with open(fd, "rb", closefd=False) as segment:
            yield list(_parse(path, segment.read()))
    finally:
        os.close(fd)


def records_only(entries: list[SpendRecord | Intent]) -> list[SpendRecord]:
    return [entry for entry in entries if isinstance(entry, SpendRecord)]


def _parse(path: Path, data: bytes) -> Iterator[SpendRecord | Intent]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line:
            continue
        try:
            fields = orjson.loads(line)
            if isinstance(fields, dict) and fields.keys() == {"intent"}:
                intent = Intent(fields["intent"])
                intent.record  # noqa: B018 -- a line that is no record is skipped here, not at drain time
                yield intent
            else:
                yield SpendRecord.from_json(fields)
        except (orjson.JSONDecodeError, TypeError):
            # Only a write torn by a power cut can leave this; the rest of the segment is good.
            logger.error("%s:%d: unreadable spend record skipped", path, number)
