"""The ledger: records spooled on the request path reach the database when it drains, and stay in the
spool (none lost, none counted twice) while the database is away, down to a real PostgreSQL outage
under load through the gateway."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.ledger.ledger import Ledger
from gateway.ledger.postgres import PostgresLedgerStore
from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Intent, Spool, claimed
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.ledger.store import LedgerUnavailable
from tests.conftest import RunningGateway, free_port, openai_deployment
from tests.private_postgres import PrivatePostgres, private_postgres

PROJECT = Path(__file__).resolve().parents[2]
Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]

LOAD_SECONDS = 40.0
OUTAGE_STARTS_AFTER = 5.0
OUTAGE_SECONDS = 30.0
LOAD_THREADS = 3
DRAIN_WAIT_SECONDS = 20.0


def spend(record_id: str, **fields: Any) -> SpendRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{record_id}", "at": 1_740_823_200.0, "team": "alpha", "key_id": "k1",
        "policy": "default", "route": "local", "rule": "short", "deployment": "small", "model": "small-m",
        "stream": False, "status": 200, "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.25,
        **fields,
    }  # fmt: skip
    return SpendRecord(id=record_id, **values)


def unreachable_postgres() -> PostgresLedgerStore:
    """A store whose database is away: nothing listens on the port (LedgerUnavailable on use)."""
    return PostgresLedgerStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x")


def stored_ids(path: Path) -> list[str]:
    """The ids in a SQLite ledger, read through a connection of the test's own."""
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM ledger ORDER BY id")]
    finally:
        db.close()


def spooled_ids(spool: Spool) -> list[list[str]]:
    """The records waiting in each sealed segment."""
    segments = []
    for path in spool.sealed():
        with claimed(path) as records:
            assert records is not None
            segments.append([record.id for record in records])
    return segments


def test_recorded_records_are_drained_into_the_store(tmp_path: Path) -> None:
    spool_dir, database = tmp_path / "spool", tmp_path / "ledger.sqlite"
    ledger = Ledger(Spool(spool_dir), SqliteLedgerStore(database))

    async def scenario() -> tuple[int, int]:
        for record_id in ("a", "b", "c"):
            ledger.record(spend(record_id))
        drained = await ledger.drain()
        again = await ledger.drain()
        return drained, again

    try:
        assert asyncio.run(scenario()) == (3, 0)
        assert stored_ids(database) == ["a", "b", "c"]
        assert ledger.spool.sealed() == []
        # Only the fresh (empty) segment new records go to is left (beside the writer's lease).
        assert [path.stat().st_size for path in spool_dir.glob("*.jsonl")] == [0]
        assert ledger.report(["team"]) == [
            {
                "team": "alpha", "requests": 3, "prompt_tokens": 30, "completion_tokens": 15,
                "cost_usd": 0.75, "reference_usd": None, "saved_usd": None, "unpriced_requests": 0,
                "estimated_requests": 0, "cached_answers": 0, "errors": 0,
            }
        ]  # fmt: skip
    finally:
        asyncio.run(ledger.close())
    assert list(spool_dir.iterdir()) == []


def test_closing_drains_what_is_left(tmp_path: Path) -> None:
    ledger = Ledger(Spool(tmp_path / "spool"), SqliteLedgerStore(tmp_path / "ledger.sqlite"))
    ledger.record(spend("last"))
    asyncio.run(ledger.close())
    assert stored_ids(tmp_path / "ledger.sqlite") == ["last"]
    assert list((tmp_path / "spool").iterdir()) == []


def test_an_unavailable_store_keeps_the_records_until_one_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    away = unreachable_postgres()
    ledger = Ledger(Spool(tmp_path / "spool"), away)

    async def scenario() -> int:
        for number in range(4):
            ledger.record(spend(f"first-{number}"))
        with pytest.raises(LedgerUnavailable):
            await ledger.drain()
        assert spooled_ids(ledger.spool) == [[f"first-{number}" for number in range(4)]]
        ledger.record(spend("second-0"))
        ledger.record(spend("second-1"))
        with pytest.raises(LedgerUnavailable):
            await ledger.drain()
        assert spooled_ids(ledger.spool) == [
            [f"first-{number}" for number in range(4)],
            ["second-0", "second-1"],
        ]
        ledger.store = SqliteLedgerStore(tmp_path / "ledger.sqlite")
        return await ledger.drain()

    try:
        with caplog.at_level(logging.WARNING, logger="gateway.ledger.ledger"):
            assert asyncio.run(scenario()) == 6
    finally:
        away.close()
        asyncio.run(ledger.close())  # closes the working store too
    assert stored_ids(tmp_path / "ledger.sqlite") == [
        "first-0", "first-1", "first-2", "first-3", "second-0", "second-1"
    ]  # fmt: skip
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2  # once per outage, not once per attempt
    assert warnings[0].startswith("spend ledger database unavailable, records kept in the spool: PostgreSQL:")
    assert warnings[1] == "spend ledger database is back; draining the spool"


def test_the_drain_loop_backs_off_and_resumes(tmp_path: Path) -> None:
    away = unreachable_postgres()
    ledger = Ledger(Spool(tmp_path / "spool"), away, flush_interval=0.01)
    database = tmp_path / "ledger.sqlite"

    async def scenario() -> list[str]:
        runner = asyncio.create_task(ledger.run())
        try:
            ledger.record(spend("a"))
            await asyncio.sleep(0.2)
            assert len(ledger.spool.sealed()) == 1
            ledger.record(spend("b"))
            ledger.store = SqliteLedgerStore(database)
            deadline = time.monotonic() + 10
            while len(stored_ids(database)) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            return stored_ids(database)
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

    try:
        assert asyncio.run(scenario()) == ["a", "b"]
    finally:
        away.close()
        asyncio.run(ledger.close())


# The outage: a real PostgreSQL stopped under load, then started again.


@dataclass
class Load:
    """What the clients saw: the request ids of the answers they received in full, and failures."""

    answered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def put_load(client: openai.OpenAI, name: str, until: float, load: Load) -> None:
    number = 0
    while time.monotonic() < until:
        request_id = f"{name}-{number}"
        number += 1
        try:
            if number % 4 == 0:
                stream = client.chat.completions.create(
                    model="auto",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers={"x-request-id": request_id},
                )
                with stream:
                    chunks = list(stream)
                assert chunks[-1].usage is not None
            else:
                answer = client.chat.completions.create(
                    model="auto", messages=MESSAGES, extra_headers={"x-request-id": request_id}
                )
                assert answer.choices[0].message.content
        except Exception as exc:
            with load.lock:
                load.failures.append(f"{request_id}: {exc!r}")
            continue
        with load.lock:
            load.answered.append(request_id)


def ledger_rows(url: str) -> list[str]:
    """The request ids in the ledger (empty while its table does not exist yet)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass('ledger') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return []
        return [row[0] for row in conn.execute("SELECT request_id FROM ledger")]


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own (it gets stopped); requested before `gateway`, so the
    gateway shuts down (draining its spool) before the server goes."""
    with private_postgres() as server:
        yield server


def test_no_record_is_lost_or_doubled_across_a_postgres_outage_under_load(
    postgres: PrivatePostgres,
    upstreams: Upstreams,
    gateway: Gateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = {
        "deployments": {
            "primary": openai_deployment(upstreams(), price={"input_per_mtok": 1, "output_per_mtok": 2})
        },
        "routes": {"local": ["primary"]},
        "default_route": "local",
    }
    gw = gateway(spec, database_url=postgres.url)
    load = Load()
    started = time.monotonic()
    until = started + LOAD_SECONDS
    clients = [
        threading.Thread(target=put_load, args=(gw.client(timeout=10), f"client{n}", until, load))
        for n in range(LOAD_THREADS)
    ]
    with caplog.at_level(logging.WARNING, logger="gateway.ledger"):
        for thread in clients:
            thread.start()
        time.sleep(OUTAGE_STARTS_AFTER)
        with load.lock:
            before_outage = len(load.answered)
        postgres.stop()
        time.sleep(OUTAGE_SECONDS)
        with load.lock:
            during_outage = len(load.answered) - before_outage
        postgres.start()
        for thread in clients:
            thread.join(LOAD_SECONDS + 30)
        assert not any(thread.is_alive() for thread in clients)

        deadline = time.monotonic() + DRAIN_WAIT_SECONDS
        rows = ledger_rows(postgres.url)
        while len(rows) < len(load.answered) and time.monotonic() < deadline:
            time.sleep(0.25)
            rows = ledger_rows(postgres.url)

    assert load.failures == []
    assert before_outage > 0 and during_outage > 0, (before_outage, during_outage)
    assert len(rows) == len(load.answered)
    assert sorted(rows) == sorted(load.answered)  # each answer exactly once: none lost, none doubled
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("spend ledger database unavailable") for message in messages)
    assert "spend ledger database is back; draining the spool" in messages
    # The outage is an expected condition, not a bug: no tracebacks from the drainer.
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


# ---- intents: requests in flight -----------------------------------------------------------------

# Spools the intents of three requests, ends one of them, then dies by SIGKILL mid-flight.
KILLED_MID_FLIGHT = """
import asyncio, os, signal, sys
from pathlib import Path
from gateway.ledger.ledger import Ledger
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Intent, Spool

state = Path(sys.argv[1])
ledger = Ledger(Spool(state / "spool"), SqliteLedgerStore(state / "ledger.sqlite"))

def record(record_id, **fields):
    values = dict(request_id="req-" + record_id, at=1_740_823_200.0, team="alpha", key_id="k1", policy="p",
                  route="frontier", rule="r", deployment="big", model="big-m", stream=False, status=200)
    values.update(fields)
    return SpendRecord(id=record_id, **values)

async def main():
    for record_id in ("a", "b", "c"):
        intent = record(record_id, status=500, error="interrupted", prompt_tokens=7, estimated=True)
        ledger.intend(Intent.of(intent))
    await ledger.drain()  # nothing ended yet: all three carried into the next segment
    ledger.record(record("a", prompt_tokens=7, completion_tokens=3))
    await ledger.drain()  # "a" reaches the ledger; "b" and "c" are still in flight
    ledger.record(record("b", prompt_tokens=7, completion_tokens=4))  # ended, never drained
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_a_request_in_flight_when_its_writer_dies_is_recorded_once_as_interrupted(tmp_path: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_FLIGHT, str(tmp_path)], cwd=PROJECT, timeout=60, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    assert stored_ids(tmp_path / "ledger.sqlite") == ["a"]

    successor = Ledger(Spool(tmp_path / "spool"), SqliteLedgerStore(tmp_path / "ledger.sqlite"))
    try:
        assert asyncio.run(successor.drain()) == 2
    finally:
        asyncio.run(successor.close())
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    try:
        rows = db.execute("SELECT id, status, error, completion_tokens FROM ledger ORDER BY id").fetchall()
    finally:
        db.close()
    assert rows == [("a", 200, None, 3), ("b", 200, None, 4), ("c", 500, "interrupted", 0)]
    assert list((tmp_path / "spool").iterdir()) == []  # segments and the dead writer's lease gone


def test_a_live_writers_open_intents_never_become_interrupted_records(tmp_path: Path) -> None:
    """Another ledger on the same spool directory (a replica sharing it, or `gateway spend`) leaves a
    live writer's segments alone, intents and all; the writer's own drains carry them forward."""
    writer = Ledger(Spool(tmp_path / "spool"), SqliteLedgerStore(tmp_path / "ledger.sqlite"))
    other = Ledger(Spool(tmp_path / "spool"), SqliteLedgerStore(tmp_path / "ledger.sqlite"))

    async def scenario() -> None:
        writer.intend(Intent.of(spend("slow", status=500, error="interrupted")))
        for _ in range(3):
            await writer.drain()
            await other.drain()
        assert stored_ids(tmp_path / "ledger.sqlite") == []
        writer.record(spend("slow"))
        await other.drain()
        await writer.drain()

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(writer.close())
        asyncio.run(other.close())
    assert stored_ids(tmp_path / "ledger.sqlite") == ["slow"]
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    try:
        assert db.execute("SELECT status, error FROM ledger").fetchall() == [(200, None)]
    finally:
        db.close()
