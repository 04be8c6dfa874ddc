"""The batch store under test, SQLite and PostgreSQL alike (`backend`): SQLite in the test's tmp_path,
PostgreSQL in a schema of the test's own in the shared server's `test` database (127.0.0.1:5432, trust
auth), dropped at the end; and helpers to make input files and look at the tables directly."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from gateway.batches.lines import BatchLine, parse_batch_input
from gateway.batches.postgres import PostgresBatchStore
from gateway.batches.rows import BatchRow
from gateway.batches.sqlite import SqliteBatchStore
from gateway.batches.store import ThreadedBatchStore

SHARED = "postgresql://postgres@127.0.0.1:5432/test"
START = 1_750_000_000.0
CHAT = "/v1/chat/completions"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """One kind of store under test: how to open one, where it lives (a path or a URL, for a
    subprocess), and how to look at its tables directly."""

    name: str
    location: str
    open_store: Callable[..., ThreadedBatchStore]
    query: Callable[[str], list[tuple[Any, ...]]]
    opened: list[ThreadedBatchStore] = field(default_factory=list)

    def open(self, **options: Any) -> ThreadedBatchStore:
        """A store on a clock stopped at START, unless the test gives one."""
        options.setdefault("clock", Clock())
        opened = self.open_store(**options)
        self.opened.append(opened)
        return opened

    def close_all(self) -> None:
        for opened in self.opened:
            asyncio.run(opened.aclose())

    def lines(self, batch_id: str) -> list[tuple[Any, ...]]:
        """(line_no, state, claimed_by, attempts) of each of the batch's lines."""
        return self.query(
            "SELECT line_no, state, claimed_by, attempts FROM batch_lines"
            f" WHERE batch_id = '{batch_id}' ORDER BY line_no"
        )


def sqlite_query(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    def query(sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    return query


def postgres_query(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql.replace("%", "%%")).fetchall()

    return query


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The shared server's `test` database, with a schema of this test's own first on the search path."""
    schema = f"gw_batches_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(SHARED, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"these tests need PostgreSQL at {SHARED}: {exc}")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{SHARED}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "batches.sqlite"
        chosen = Backend(
            "sqlite", str(path), lambda **options: SqliteBatchStore(path, **options), sqlite_query(path)
        )
    else:
        url: str = request.getfixturevalue("postgres_url")
        chosen = Backend(
            "postgresql", url, lambda **options: PostgresBatchStore(url, **options), postgres_query(url)
        )
    yield chosen
    chosen.close_all()


def request_line(n: int, endpoint: str = CHAT, **changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": f"request-{n}",
        "method": "POST",
        "url": endpoint,
        "body": {"model": "small-m", "messages": [{"role": "user", "content": f"Question {n}, 世界"}]},
    }
    line.update(changes)
    return line


def jsonl(*lines: Any) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def input_file(count: int, endpoint: str = CHAT) -> bytes:
    return jsonl(*(request_line(n, endpoint) for n in range(1, count + 1)))


def output_of(custom_id: str, status_code: int = 200, **usage: int) -> dict[str, Any]:
    """A line's output object as a worker would make it."""
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": status_code,
            "request_id": f"req_{custom_id}",
            "body": {"id": f"chatcmpl-{custom_id}", "object": "chat.completion", "usage": usage},
        },
        "error": None,
    }


async def new_batch(
    store: ThreadedBatchStore,
    count: int,
    tenant: str = "alpha",
    endpoint: str = CHAT,
    metadata: dict[str, str] | None = None,
) -> BatchRow:
    """A batch of `count` requests, from an input file uploaded first."""
    content = input_file(count, endpoint)
    uploaded = await store.create_file(tenant, "batch", "input.jsonl", content)
    lines: list[BatchLine] = parse_batch_input(content, endpoint)
    return await store.create_batch(tenant, uploaded.id, endpoint, "24h", metadata, lines)
