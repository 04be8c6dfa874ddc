"""The spend ledger: `record` appends to the write-ahead spool on the request path (a few µs); `run`
drains sealed spool segments into the database in batches, off the request path, and keeps them
while the database is away (backing off, warning once per outage).

`intend` spools a request's intent before its upstream is called; `record` resolves it. Intents
still open when a segment is sealed are written again into the next one, so a crash leaves each
unresolved intent in its writer's newest segment, where the next drainer turns it into a record
of an interrupted request (see `spool`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Intent, Spool, claimed, records_only
from gateway.ledger.store import LedgerRejected, LedgerStore, LedgerUnavailable

logger = logging.getLogger("gateway.ledger.ledger")

MAX_BACKOFF = 5.0
# Records kept in memory after sealing, to spare reading their segments back.
MAX_KEPT_IN_MEMORY = 50_000


class Ledger:
    def __init__(self, spool: Spool, store: LedgerStore, flush_interval: float = 0.5) -> None:
        self.spool = spool
        self.store = store
        self._interval = flush_interval
        self._outage = False
        # Health, for /readyz (read without I/O): why and since when drains fail, and what waits.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.waiting_segments = 0
        self._drain_lock = asyncio.Lock()
        # What this process wrote, kept until drained so its segments need not be parsed back.
        self._unsealed: list[SpendRecord] = []
        self._written: dict[Path, list[SpendRecord]] = {}
        # Requests whose upstream was called and whose record is not written yet, by record id.
        self._open: dict[str, Intent] = {}

    def intend(self, intent: Intent) -> None:
        """Before an upstream is called: what to record if this process dies before `record`."""
        self.spool.append_intent(intent)
        self._open[intent.id] = intent

    def record(self, record: SpendRecord) -> None:
        self.spool.append(record)
        self._unsealed.append(record)
        if self._open:
            self._open.pop(record.id, None)

    @property
    def open_intents(self) -> int:
        return len(self._open)

    async def run(self) -> None:
        wait = self._interval
        while True:
            await asyncio.sleep(wait)
            try:
                await self.drain()
                wait = self._interval
            except LedgerUnavailable:
                wait = min(MAX_BACKOFF, wait * 2)
            except Exception:  # a bug must not stop the drainer: the spool keeps everything
                logger.exception("draining the spend ledger failed; will retry")
                wait = min(MAX_BACKOFF, wait * 2)

    async def drain(self) -> int:
        """Seal the current segment and copy every sealed one into the database; the number of
        records written. Raises LedgerUnavailable (records kept) when the database is away."""
        async with self._drain_lock:
            current = self.spool.current
            sealed = self.spool.seal()
            if sealed is not None:
                for intent in self._open.values():  # still in flight: carried into the new segment
                    self.spool.append_intent(intent)
                if current is not None:
                    self._written[current], self._unsealed = self._unsealed, []
                if sum(len(kept) for kept in self._written.values()) > MAX_KEPT_IN_MEMORY:
                    self._written.clear()  # a long outage: the files have them, read them back later
                await asyncio.to_thread(self.spool.release, sealed)
            written = 0
            waiting = self.spool.sealed()
            self.waiting_segments = len(waiting)
            try:
                for path in waiting:
                    written += await asyncio.to_thread(self._drain_segment, path)
                    self.waiting_segments -= 1
            except LedgerUnavailable as exc:
                if self.failing_since is None:
                    self.failing_since = time.time()
                self.last_error = str(exc)
                raise
            self.failing_since, self.last_error = None, None
            await asyncio.to_thread(self.spool.forget_gone_writers)
            return written

    def _drain_segment(self, path: Path) -> int:
        with claimed(path, self._written.get(path)) as entries:
            if entries is None:
                return 0
            records = self._to_keep(path, entries)
            try:
                if records:
                    self.store.insert(records)
            except LedgerUnavailable as exc:
                if not self._outage:
                    logger.warning("spend ledger database unavailable, records kept in the spool: %s", exc)
                self._outage = True
                raise
            except LedgerRejected as exc:
                # Retrying cannot help, and must not hold up every later segment: set it aside.
                aside = path.with_suffix(".bad")
                logger.error(
                    "spend ledger refused %s (%s); kept as %s for a person to look at", path, exc, aside
                )
                path.rename(aside)
                self._written.pop(path, None)
                return 0
            if self._outage:
                logger.warning("spend ledger database is back; draining the spool")
                self._outage = False
            path.unlink(missing_ok=True)
            self._written.pop(path, None)
            return len(records)

    def _to_keep(self, path: Path, entries: list[SpendRecord | Intent]) -> list[SpendRecord]:
        """A segment's records, and, in the newest segment a dead writer left, its unresolved intents
        as records of interrupted requests. This writer's own open intents live on in its current
        segment."""
        records = records_only(entries)
        if (
            self.spool.is_own(path)
            or len(records) == len(entries)
            or not self.spool.is_newest_of_its_writer(path)
        ):
            return records
        ended = {record.id for record in records}
        interrupted = {
            entry.id: entry.record for entry in entries if isinstance(entry, Intent) and entry.id not in ended
        }
        if interrupted:
            logger.warning(
                "spend ledger: %d requests in flight when %s's writer died recorded as interrupted",
                len(interrupted),
                path.name,
            )
        return records + list(interrupted.values())

    def report(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        team: str | None = None,
    ) -> list[dict[str, Any]]:
        return self.store.report(group_by, since, until, team)

    async def close(self) -> None:
        try:
            await self.drain()
        except LedgerUnavailable:
            logger.warning("spend ledger database unavailable at shutdown; records stay in the spool")
        finally:
            self.spool.close()
            # Off the event loop: the store waits there for a call a cancelled drain left running.
            await asyncio.to_thread(self.store.close)
