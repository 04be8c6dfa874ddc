"""The stored responses' stores, SQLite and PostgreSQL alike: a response comes back whole, only to its
tenant, until it expires; delete, replace, sweep, the size limit, the migrations, and a new store over
the same file or database finding what an earlier one put. PostgreSQL gets a database of its own for
this module (created on the server at 127.0.0.1:5432, dropped at the end); each test starts without
tables."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.inbound.response_store import StoredResponse
from gateway.stored_responses import store as store_module
from gateway.stored_responses.postgres import PostgresResponseStore
from gateway.stored_responses.schema import MAX_STORED_BYTES
from gateway.stored_responses.sqlite import SqliteResponseStore
from gateway.stored_responses.store import ResponseStoreUnavailable, ThreadedResponseStore

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
TTL = 60.0
START = 1_750_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(response_id: str = "resp_1", tenant: str = "alpha", **fields: Any) -> StoredResponse:
    values: dict[str, Any] = {
        "response": {
            "id": response_id,
            "object": "response",
            "created_at": int(START),
            "status": "completed",
            "model": "small-m",
            "output": [
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": 'Héllo, 世界 🌍\n"quoted" \\ back', "annotations": []}
                    ],
                }
            ],
            "usage": {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
            "temperature": 0.25,
            "metadata": {
                "big": 2**53 + 1,
                "negative": -3,
                "nothing": None,
                "yes": True,
                "nested": [[1.5], {}],
            },
        },
        "input_items": [
            {
                "id": "msg_in_1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hi"}],
            }
        ],
        "conversation": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Héllo, 世界 🌍"},
        ],
        "created_at": START,
        **fields,
    }
    return StoredResponse(id=response_id, tenant=tenant, **values)


@dataclass
class Backend:
    """One kind of store under test: how to open one and how to look at its tables directly."""

    name: str
    open_store: Callable[..., ThreadedResponseStore]
    query: Callable[[str], list[tuple[Any, ...]]]
    opened: list[ThreadedResponseStore] = field(default_factory=list)

    def open(self, ttl_seconds: float = TTL, **options: Any) -> ThreadedResponseStore:
        """A store on a clock stopped at START, unless the test gives one."""
        options.setdefault("clock", Clock())
        opened = self.open_store(ttl_seconds, **options)
        self.opened.append(opened)
        return opened

    def close_all(self) -> None:
        for opened in self.opened:
            asyncio.run(opened.aclose())

    def ids(self) -> list[str]:
        return [row[0] for row in self.query("SELECT id FROM stored_responses ORDER BY id")]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database for this module; dropped (connections and all) at the end."""
    name = f"gw_responses_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"these tests need PostgreSQL at {ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


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
            return conn.execute(sql).fetchall()

    return query


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "responses.sqlite"
        chosen = Backend(
            "sqlite", lambda ttl, **options: SqliteResponseStore(path, ttl, **options), sqlite_query(path)
        )
    else:
        url: str = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS stored_responses, stored_responses_migrations")
        chosen = Backend(
            "postgresql",
            lambda ttl, **options: PostgresResponseStore(url, ttl, **options),
            postgres_query(url),
        )
    yield chosen
    chosen.close_all()


def test_a_stored_response_comes_back_whole(backend: Backend) -> None:
    original = stored()

    async def scenario() -> StoredResponse | None:
        opened = backend.open()
        await opened.put(original)
        return await opened.get("alpha", "resp_1")

    found = asyncio.run(scenario())
    assert found == original
    assert found is not None and found.response["metadata"]["big"] == 2**53 + 1
    assert isinstance(found.created_at, float)


def test_a_missing_id_is_not_found(backend: Backend) -> None:
    async def scenario() -> tuple[StoredResponse | None, bool]:
        opened = backend.open()
        await opened.put(stored())
        return await opened.get("alpha", "resp_other"), await opened.delete("alpha", "resp_other")

    assert asyncio.run(scenario()) == (None, False)
    assert backend.ids() == ["resp_1"]


def test_another_tenants_response_is_neither_seen_nor_deleted_nor_overwritten(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        opened = backend.open()
        await opened.put(stored(tenant="alpha"))
        seen_by_beta = await opened.get("beta", "resp_1")
        seen_without_auth = await opened.get("", "resp_1")
        deleted_by_beta = await opened.delete("beta", "resp_1")
        with pytest.raises(ValueError, match="another tenant"):
            await opened.put(stored(tenant="beta", response={"stolen": True}))
        return seen_by_beta, seen_without_auth, deleted_by_beta, await opened.get("alpha", "resp_1")

    seen_by_beta, seen_without_auth, deleted_by_beta, still_alphas = asyncio.run(scenario())
    assert (seen_by_beta, seen_without_auth, deleted_by_beta) == (None, None, False)
    assert still_alphas == stored(tenant="alpha")
    assert backend.query("SELECT id, tenant FROM stored_responses") == [("resp_1", "alpha")]


def test_the_empty_tenant_is_a_tenant_of_its_own(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        opened = backend.open()
        await opened.put(stored(tenant=""))
        return await opened.get("", "resp_1"), await opened.get("alpha", "resp_1")

    mine, alphas = asyncio.run(scenario())
    assert mine == stored(tenant="") and alphas is None


def test_a_deleted_response_is_gone(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        opened = backend.open()
        await opened.put(stored("resp_1"))
        await opened.put(stored("resp_2"))
        first = await opened.delete("alpha", "resp_1")
        again = await opened.delete("alpha", "resp_1")
        return first, again, await opened.get("alpha", "resp_1"), await opened.get("alpha", "resp_2")

    first, again, found, other = asyncio.run(scenario())
    assert (first, again, found) == (True, False, None)
    assert other == stored("resp_2")
    assert backend.ids() == ["resp_2"]


def test_putting_the_same_id_again_replaces_it(backend: Backend) -> None:
    later = stored(
        response={"id": "resp_1", "status": "incomplete"},
        input_items=[],
        conversation=[{"role": "user", "content": "again"}],
        created_at=START + 5,
    )

    async def scenario() -> StoredResponse | None:
        opened = backend.open()
        await opened.put(stored())
        await opened.put(later)
        return await opened.get("alpha", "resp_1")

    assert asyncio.run(scenario()) == later
    assert backend.query("SELECT id, created_at, expires_at FROM stored_responses") == [
        ("resp_1", START + 5, START + 5 + TTL)
    ]


def test_a_response_expires_ttl_seconds_after_its_creation(backend: Backend) -> None:
    clock = Clock()

    async def scenario() -> list[Any]:
        opened = backend.open(clock=clock)
        await opened.put(stored("resp_1"))
        await opened.put(stored("resp_2"))
        seen = []
        clock.now = START + TTL - 0.5
        seen.append(await opened.get("alpha", "resp_1"))
        clock.now = START + TTL  # expired: expires_at <= now
        seen.append(await opened.get("alpha", "resp_1"))
        seen.append(await opened.delete("alpha", "resp_2"))  # deleted, but it was gone already
        return seen

    before, after, deleted = asyncio.run(scenario())
    assert before == stored("resp_1")
    assert (after, deleted) == (None, False)
    assert backend.ids() == ["resp_1"]  # expired, not swept yet


def test_an_expired_id_can_be_taken_by_another_tenant(backend: Backend) -> None:
    clock = Clock()

    async def scenario() -> tuple[Any, ...]:
        opened = backend.open(clock=clock)
        await opened.put(stored(tenant="alpha"))
        clock.now = START + TTL
        await opened.put(stored(tenant="beta", created_at=clock.now))
        return await opened.get("beta", "resp_1"), await opened.get("alpha", "resp_1")

    betas, alphas = asyncio.run(scenario())
    assert betas == stored(tenant="beta", created_at=START + TTL) and alphas is None


def test_a_sweep_deletes_expired_rows_only_a_batch_at_a_time(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SWEEP_BATCH", 3)
    clock = Clock()

    async def scenario() -> list[int]:
        opened = backend.open(clock=clock, sweep_every=1e9)
        for n in range(5):  # expire at START + 10 … START + 14
            await opened.put(stored(f"resp_old_{n}", created_at=START + 10 + n - TTL))
        await opened.put(stored("resp_new"))
        clock.now = START + 13.5  # the first four expired
        return [await opened.sweep(), await opened.sweep(), await opened.sweep()]

    assert asyncio.run(scenario()) == [3, 1, 0]
    assert backend.ids() == ["resp_new", "resp_old_4"]

    async def later() -> int:
        return await backend.opened[0].sweep()

    clock.now = START + 14  # expires_at <= now: expired
    assert asyncio.run(later()) == 1
    assert backend.ids() == ["resp_new"]


def test_puts_sweep_now_and_then(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SWEEP_BATCH", 2)
    clock = Clock()
    seen: list[list[str]] = []

    async def scenario() -> None:
        opened = backend.open(ttl_seconds=10, clock=clock, sweep_every=600)
        await opened.put(stored("resp_a", created_at=clock.now))  # the first put sweeps: nothing yet
        clock.now += 1
        await opened.put(stored("resp_b", created_at=clock.now))
        clock.now += 1
        await opened.put(stored("resp_c", created_at=clock.now))
        clock.now += 100  # a, b, c expired
        await opened.put(stored("resp_d", created_at=clock.now))  # not ten minutes since the last sweep
        seen.append(backend.ids())
        clock.now += 600  # d expired too
        await opened.put(stored("resp_e", created_at=clock.now))  # sweeps a batch of two
        seen.append(backend.ids())
        await opened.put(stored("resp_f", created_at=clock.now))  # a full batch: more may wait
        seen.append(backend.ids())
        await opened.put(stored("resp_g", created_at=clock.now))  # none expired left
        seen.append(backend.ids())

    asyncio.run(scenario())
    assert seen == [
        ["resp_a", "resp_b", "resp_c", "resp_d"],
        ["resp_c", "resp_d", "resp_e"],
        ["resp_e", "resp_f"],
        ["resp_e", "resp_f", "resp_g"],
    ]


def test_a_store_opened_again_finds_what_an_earlier_one_put(backend: Backend) -> None:
    async def first() -> None:
        earlier = backend.open()
        await earlier.put(stored("resp_kept"))
        await earlier.put(stored("resp_deleted"))
        assert await earlier.delete("alpha", "resp_deleted")
        await earlier.aclose()

    async def second() -> tuple[Any, ...]:
        later = backend.open()
        return await later.get("alpha", "resp_kept"), await later.get("alpha", "resp_deleted")

    asyncio.run(first())
    assert asyncio.run(second()) == (stored("resp_kept"), None)


def test_a_response_over_16_mib_is_refused(backend: Backend) -> None:
    # {"text":"…"} and [] and []: 15 bytes besides the text.
    largest = stored(response={"text": "x" * (MAX_STORED_BYTES - 15)}, input_items=[], conversation=[])
    too_large = stored(
        "resp_2", response={"text": "x" * (MAX_STORED_BYTES - 14)}, input_items=[], conversation=[]
    )

    async def scenario() -> StoredResponse | None:
        opened = backend.open()
        await opened.put(largest)
        with pytest.raises(ValueError, match=r"resp_2 takes 16777217 bytes serialized.*16 MiB"):
            await opened.put(too_large)
        return await opened.get("alpha", "resp_1")

    assert asyncio.run(scenario()) == largest
    assert backend.ids() == ["resp_1"]


def test_a_nul_character_is_kept_by_sqlite_and_replaced_in_postgresql_only(backend: Backend) -> None:
    # A real NUL, and a literal backslash-u0000 (text a client typed), which must come back as it was.
    original = stored(
        response={"text": "a\x00b", "typed": "\\u0000", "both": "\\\x00", "key\x00": 1},
        conversation=[{"role": "user", "content": "\x00"}],
    )

    async def scenario() -> StoredResponse | None:
        opened = backend.open()
        await opened.put(original)
        return await opened.get("alpha", "resp_1")

    found = asyncio.run(scenario())
    if backend.name == "sqlite":
        assert found == original
    else:
        assert found == replace(
            original,
            response={"text": "a\ufffdb", "typed": "\\u0000", "both": "\\\ufffd", "key\ufffd": 1},
            conversation=[{"role": "user", "content": "\ufffd"}],
        )


def test_migrations_are_applied_once(backend: Backend) -> None:
    async def open_and_read() -> int:
        opened = backend.open()
        version = await opened.schema_version()
        await opened.aclose()
        return version

    assert asyncio.run(open_and_read()) == 1
    applied = backend.query("SELECT version, description, applied_at FROM stored_responses_migrations")
    assert [(version, description) for version, description, _ in applied] == [
        (1, "the stored responses table")
    ]
    assert asyncio.run(open_and_read()) == 1
    assert (
        backend.query("SELECT version, description, applied_at FROM stored_responses_migrations") == applied
    )


def test_replicas_starting_together_all_get_the_table(backend: Backend) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def replica(n: int) -> None:
        async def scenario() -> None:
            opened = backend.open_store(TTL, clock=Clock())
            try:
                await opened.put(stored(f"resp_{n}"))
            finally:
                await opened.aclose()

        try:
            start.wait(timeout=10)
            asyncio.run(scenario())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert backend.ids() == ["resp_0", "resp_1", "resp_2", "resp_3"]
    assert backend.query("SELECT version FROM stored_responses_migrations") == [(1,)]


def test_a_closed_store_refuses_calls(backend: Backend) -> None:
    async def scenario() -> None:
        opened = backend.open()
        await opened.put(stored())
        await opened.aclose()
        await opened.aclose()  # twice is fine
        with pytest.raises(ResponseStoreUnavailable, match="closed"):
            await opened.get("alpha", "resp_1")

    asyncio.run(scenario())


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan")])
def test_the_ttl_must_be_a_positive_number(backend: Backend, ttl: float) -> None:
    with pytest.raises(ValueError, match="TTL"):
        backend.open(ttl_seconds=ttl)


def test_sqlite_keeps_its_file_in_wal_mode_with_bytes_payloads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "responses.sqlite"

    async def scenario() -> None:
        opened = SqliteResponseStore(path, TTL, clock=Clock())
        try:
            await opened.put(stored())
        finally:
            await opened.aclose()

    asyncio.run(scenario())
    query = sqlite_query(path)
    assert query("PRAGMA journal_mode") == [("wal",)]
    assert query(
        "SELECT typeof(response), typeof(input_items), typeof(conversation) FROM stored_responses"
    ) == [("blob", "blob", "blob")]


def test_postgresql_keeps_the_payloads_as_jsonb(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS stored_responses, stored_responses_migrations")

    async def scenario() -> None:
        opened = PostgresResponseStore(postgres_url, TTL, clock=Clock())
        try:
            await opened.put(stored())
        finally:
            await opened.aclose()

    asyncio.run(scenario())
    query = postgres_query(postgres_url)
    assert query(
        "SELECT pg_typeof(response)::text, pg_typeof(input_items)::text, pg_typeof(conversation)::text,"
        " response->'usage'->>'total_tokens' FROM stored_responses"
    ) == [("jsonb", "jsonb", "jsonb", "19")]
