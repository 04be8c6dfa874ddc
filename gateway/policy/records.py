"""What the policy decided for each routed request, with the signal values it looked at — never the
prompt — so a candidate policy can be replayed against real traffic. Written to SQLite in batches,
off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.ledger.schema import DECISION_COLUMNS
from gateway.policy.signals import SignalValue
from gateway.router.recorded import INSERT_OUTCOME, OUTCOMES_SCHEMA, OutcomeRecord
from gateway.state.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    request_id TEXT NOT NULL,
    at REAL NOT NULL,
    policy TEXT NOT NULL,
    team TEXT,
    rule TEXT NOT NULL,
    route TEXT NOT NULL,
    deployment TEXT,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    signals TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
CREATE TABLE IF NOT EXISTS shadows (
    request_id TEXT NOT NULL,
    at REAL NOT NULL,
    rule TEXT NOT NULL,
    route TEXT NOT NULL,
    deployment TEXT,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER
);
"""


MAX_PENDING = 100_000
logger = logging.getLogger("gateway.policy.records")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    request_id: str
    at: float
    policy: str
    team: str | None
    rule: str
    route: str
    deployment: str | None
    status: int
    latency_ms: float
    signals: Mapping[str, SignalValue]


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    """A copy of a request sent to a rule's shadow route: how it went, never what it said."""

    request_id: str
    at: float
    rule: str
    route: str
    deployment: str | None
    status: int
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None


class DecisionLog:
    """Buffers records in memory and writes them in one transaction per batch on a worker thread."""

    def __init__(self, path: Path, flush_interval: float = 0.5) -> None:
        self._db = open_database(path, SCHEMA + OUTCOMES_SCHEMA)
        self._lock = threading.Lock()
        self._pending: list[DecisionRecord] = []
        self._shadows: list[ShadowRecord] = []
        self._outcomes: list[OutcomeRecord] = []
        self._interval = flush_interval

    def add(self, record: DecisionRecord) -> None:
        self._pending.append(record)

    def add_shadow(self, record: ShadowRecord) -> None:
        self._shadows.append(record)

    def add_outcome(self, record: OutcomeRecord) -> None:
        """A request labelled for the router (`routing/shadow.py`)."""
        self._outcomes.append(record)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except sqlite3.Error:  # e.g. a full disk: keep serving, keep the records, try again
                logger.exception("could not write %d decision records; will retry", len(self._pending))

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        shadows, self._shadows = self._shadows, []
        outcomes, self._outcomes = self._outcomes, []
        if not (batch or shadows or outcomes):
            return
        try:
            await asyncio.to_thread(self._write, batch, shadows, outcomes)
        except BaseException:
            # Put them back in front, bounded: records are for what-ifs, memory is for serving.
            self._pending = (batch + self._pending)[-MAX_PENDING:]
            self._shadows = (shadows + self._shadows)[-MAX_PENDING:]
            self._outcomes = (outcomes + self._outcomes)[-MAX_PENDING:]
            raise

    def _write(
        self, batch: list[DecisionRecord], shadows: list[ShadowRecord], outcomes: list[OutcomeRecord]
    ) -> None:
        rows = [
            (r.request_id, r.at, r.policy, r.team, r.rule, r.route, r.deployment, r.status, r.latency_ms,
             json.dumps(dict(r.signals)))
            for r in batch
        ]  # fmt: skip
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany(
                "INSERT INTO shadows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.request_id, r.at, r.rule, r.route, r.deployment, r.status, r.latency_ms,
                     r.prompt_tokens, r.completion_tokens)
                    for r in shadows
                ],
            )  # fmt: skip
            self._db.executemany(INSERT_OUTCOME, [record.row() for record in outcomes])

    def read(self, since: float = 0.0) -> Iterator[DecisionRecord]:
        return read_records(self._db, since, self._lock)

    def read_shadows(self) -> list[ShadowRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM shadows ORDER BY at").fetchall()
        return [ShadowRecord(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


def read_records(
    db: sqlite3.Connection, since: float = 0.0, lock: threading.Lock | None = None
) -> Iterator[DecisionRecord]:
    with lock if lock is not None else contextlib.nullcontext():
        rows = db.execute(
            f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions WHERE at >= ? ORDER BY at", (since,)
        ).fetchall()
    for row in rows:
        yield decision_of(dict(zip(DECISION_COLUMNS, row, strict=True)))


def decision_of(row: Mapping[str, Any]) -> DecisionRecord:
    """A decision from a row of DECISION_COLUMNS: of this file's `decisions` table, or of the spend
    ledger (`LedgerStore.decisions`), which keeps the same facts."""
    return DecisionRecord(
        str(row["request_id"]), float(row["at"]), str(row["policy"]), row["team"], str(row["rule"]),
        str(row["route"]), row["deployment"], int(row["status"]), float(row["latency_ms"]),
        json.loads(row["signals"]),
    )  # fmt: skip


def open_records(path: Path) -> sqlite3.Connection:
    """The recorded decisions of a gateway's state directory, read-only."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no recorded decisions (has the gateway served any `auto` request?)")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
