"""The ledger's stores, SQLite and PostgreSQL alike: migrations applied once, idempotent inserts, and
the spend report's exact sums, groups and filters. PostgreSQL gets a database of its own for this
module (created on the server at 127.0.0.1:5432, dropped at the end); each test starts without tables."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.ledger.feedback import Feedback
from gateway.ledger.postgres import PostgresLedgerStore
from gateway.ledger.record import SpendRecord
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.ledger.store import LedgerStore

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

DAY_1 = datetime(2025, 3, 1, 10, tzinfo=UTC).timestamp()
DAY_1_LAST_SECOND = datetime(2025, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp() + 0.5
DAY_2 = datetime(2025, 3, 2, tzinfo=UTC).timestamp()


def spend(record_id: str, **fields: Any) -> SpendRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{record_id}", "at": DAY_1, "team": "alpha", "key_id": "k1",
        "policy": "default", "route": "local", "rule": "short", "deployment": "small", "model": "small-m",
        "stream": False, "status": 200, **fields,
    }  # fmt: skip
    return SpendRecord(id=record_id, **values)


# Costs are binary fractions so that sums are exact whatever order a database adds them in.
# fmt: off
RECORDS = (
    spend("a", prompt_tokens=100, completion_tokens=20, cost_usd=0.25, reference_usd=1.0),
    spend(
        "b", at=DAY_1_LAST_SECOND, route="frontier", rule="long", deployment="big", model="big-m",
        prompt_tokens=300, completion_tokens=50, cost_usd=2.0, reference_usd=2.0,
    ),
    # No price known for this answer: its cost is unknown, not $0.
    spend(
        "c", at=DAY_2, team="beta", rule="long", prompt_tokens=40, completion_tokens=10, estimated=True,
        cost_usd=None, reference_usd=0.5,
    ),
    # Refused before routing: nothing spent, no route, no model.
    spend(
        "d", at=DAY_2 + 60, team="beta", route=None, rule=None, deployment=None, model=None, status=429,
        error="rate_limit_exceeded", cost_usd=0.0, reference_usd=None,
    ),
    spend(
        "e", at=DAY_2 + 3600, model="tiny-m", deployment="tiny", cache="exact", prompt_tokens=100,
        completion_tokens=20, estimated=True, cost_usd=0.0, reference_usd=1.0,
    ),
)
# fmt: on

FIELDS = (
    "requests", "prompt_tokens", "completion_tokens", "cost_usd", "reference_usd", "saved_usd",
    "unpriced_requests", "estimated_requests", "cached_answers", "errors",
)  # fmt: skip


def sums(*values: Any) -> dict[str, Any]:
    return dict(zip(FIELDS, values, strict=True))


# requests, prompt, completion, cost, reference, saved, unpriced, estimated, cached, errors
EVERYTHING = sums(5, 540, 100, 2.25, 4.5, 1.75, 1, 2, 1, 1)
ALPHA = sums(3, 500, 90, 2.25, 4.0, 1.75, 0, 1, 1, 0)
BETA = sums(2, 40, 10, 0.0, 0.5, None, 1, 1, 0, 1)
NOT_ROUTED = sums(1, 0, 0, 0.0, None, None, 0, 0, 0, 1)


@dataclass
class Backend:
    """One kind of store under test: how to open it and how to look at its tables directly."""

    name: str
    open_store: Callable[[], LedgerStore]
    query: Callable[[str], list[tuple[Any, ...]]]
    opened: list[LedgerStore] = field(default_factory=list)

    def open(self) -> LedgerStore:
        store = self.open_store()
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database for this module; dropped (connections and all) at the end."""
    name = f"gw_ledger_{uuid.uuid4().hex}"
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
        db = sqlite3.connect(path, isolation_level=None)  # autocommit: a change is kept
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
        path = tmp_path / "ledger.sqlite"
        chosen = Backend("sqlite", lambda: SqliteLedgerStore(path), sqlite_query(path))
    else:
        url: str = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS ledger, ledger_migrations, feedback, spend_hourly")
            conn.execute("DROP FUNCTION IF EXISTS ledger_rollup")
        chosen = Backend("postgresql", lambda: PostgresLedgerStore(url), postgres_query(url))
    yield chosen
    chosen.close_all()


@pytest.fixture
def store(backend: Backend) -> LedgerStore:
    """A store holding RECORDS."""
    opened = backend.open()
    opened.insert(RECORDS)
    return opened


def by(key: str, rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Rows by their group (the databases sort a missing group, None, differently: first or last)."""
    keyed = {row.pop(key): row for row in rows}
    assert len(keyed) == len(rows)
    return keyed


MIGRATED = [
    (1, "the ledger table"),
    (2, "feedback on requests"),
    (3, "spend by the hour, for dashboards"),
    (4, "the inbound API of each request"),
    (5, "priority, queue time, admission and energy"),
]


def test_migrations_are_applied_once(backend: Backend) -> None:
    first = backend.open()
    assert first.schema_version() == 5
    first.insert(RECORDS[:1])
    applied = backend.query("SELECT version, description, applied_at FROM ledger_migrations ORDER BY version")
    assert [(version, description) for version, description, _ in applied] == MIGRATED
    first.close()

    again = backend.open()
    assert again.schema_version() == 5
    assert (
        backend.query("SELECT version, description, applied_at FROM ledger_migrations ORDER BY version")
        == applied
    )
    assert backend.query("SELECT id FROM ledger") == [("a",)]


def test_inserting_the_same_records_again_counts_them_once(backend: Backend) -> None:
    opened = backend.open()
    opened.insert(RECORDS[:3])
    opened.insert(RECORDS[:3])  # a segment drained twice (crash between commit and delete)
    opened.insert(RECORDS[2:])  # overlapping
    assert backend.query("SELECT COUNT(*), COUNT(DISTINCT id) FROM ledger") == [(5, 5)]
    assert opened.report([]) == [EVERYTHING]


def test_a_stored_row_keeps_every_field(backend: Backend) -> None:
    opened = backend.open()
    opened.insert(
        [
            spend(
                "full", at=DAY_1_LAST_SECOND, stream=True, status=504, error="upstream_timeout",
                cache="semantic", cached_tokens=4, reasoning_tokens=2, estimated=True, cost_usd=0.25,
                reference_usd=1.5, latency_ms=12.5, ttfb_ms=3.25, upstream_ms=10.0, overhead_ms=2.5,
                signals={"length": 12, "topic": "code"}, body="[redacted]",
            )
        ]
    )  # fmt: skip
    assert backend.query(
        "SELECT request_id, at, day, team, key_id, policy, route, rule, deployment, model, stream, status,"
        " error, cache, cached_tokens, reasoning_tokens, estimated, cost_usd, reference_usd, saved_usd,"
        " latency_ms, ttfb_ms, upstream_ms, overhead_ms, signals, body FROM ledger"
    ) == [
        (
            "req-full", DAY_1_LAST_SECOND, "2025-03-01", "alpha", "k1", "default", "local", "short", "small",
            "small-m", 1, 504, "upstream_timeout", "semantic", 4, 2, 1, 0.25, 1.5, 1.25, 12.5, 3.25, 10.0,
            2.5, '{"length":12,"topic":"code"}', "[redacted]",
        )
    ]  # fmt: skip


def test_report_without_groups_sums_everything(store: LedgerStore) -> None:
    assert store.report([]) == [EVERYTHING]


def test_report_by_team(store: LedgerStore) -> None:
    assert store.report(["team"]) == [{"team": "alpha", **ALPHA}, {"team": "beta", **BETA}]


def test_report_by_route(store: LedgerStore) -> None:
    assert by("route", store.report(["route"])) == {
        None: NOT_ROUTED,
        "frontier": sums(1, 300, 50, 2.0, 2.0, 0.0, 0, 0, 0, 0),
        "local": sums(3, 240, 50, 0.25, 2.5, 1.75, 1, 2, 1, 0),
    }


def test_report_by_model(store: LedgerStore) -> None:
    assert by("model", store.report(["model"])) == {
        None: NOT_ROUTED,
        "big-m": sums(1, 300, 50, 2.0, 2.0, 0.0, 0, 0, 0, 0),
        "small-m": sums(2, 140, 30, 0.25, 1.5, 0.75, 1, 1, 0, 0),
        "tiny-m": sums(1, 100, 20, 0.0, 1.0, 1.0, 0, 1, 1, 0),
    }


def test_report_by_rule(store: LedgerStore) -> None:
    assert by("rule", store.report(["rule"])) == {
        None: NOT_ROUTED,
        "long": sums(2, 340, 60, 2.0, 2.5, 0.0, 1, 1, 0, 0),
        "short": sums(2, 200, 40, 0.25, 2.0, 1.75, 0, 1, 1, 0),
    }


def test_report_by_day_counts_utc_days(store: LedgerStore) -> None:
    assert store.report(["day"]) == [
        {"day": "2025-03-01", **sums(2, 400, 70, 2.25, 3.0, 0.75, 0, 0, 0, 0)},
        {"day": "2025-03-02", **sums(3, 140, 30, 0.0, 1.5, 1.0, 1, 2, 1, 1)},
    ]


def test_report_by_team_and_day(store: LedgerStore) -> None:
    assert store.report(["team", "day"]) == [
        {"team": "alpha", "day": "2025-03-01", **sums(2, 400, 70, 2.25, 3.0, 0.75, 0, 0, 0, 0)},
        {"team": "alpha", "day": "2025-03-02", **sums(1, 100, 20, 0.0, 1.0, 1.0, 0, 1, 1, 0)},
        {"team": "beta", "day": "2025-03-02", **BETA},
    ]


def test_report_since_includes_its_instant(store: LedgerStore) -> None:
    assert store.report([], since=DAY_2) == [sums(3, 140, 30, 0.0, 1.5, 1.0, 1, 2, 1, 1)]


def test_report_until_excludes_its_instant(store: LedgerStore) -> None:
    assert store.report([], until=DAY_2) == [sums(2, 400, 70, 2.25, 3.0, 0.75, 0, 0, 0, 0)]


def test_report_of_one_team(store: LedgerStore) -> None:
    assert store.report(["day"], team="beta") == [{"day": "2025-03-02", **BETA}]


def test_report_filters_combine(store: LedgerStore) -> None:
    assert store.report(["team"], since=DAY_2, until=DAY_2 + 3600, team="beta") == [{"team": "beta", **BETA}]
    assert store.report(["team"], since=DAY_2 + 1, until=DAY_2 + 3601, team="alpha") == [
        {"team": "alpha", **sums(1, 100, 20, 0.0, 1.0, 1.0, 0, 1, 1, 0)}
    ]
    assert store.report(["team"], since=DAY_2, team="gamma") == []


@pytest.mark.parametrize("group", ["prompt", "team; DROP TABLE ledger", "COUNT(*)"])
def test_report_refuses_unknown_groups(backend: Backend, store: LedgerStore, group: str) -> None:
    with pytest.raises(ValueError, match="cannot group spend by"):
        store.report(["team", group])
    assert backend.query("SELECT COUNT(*) FROM ledger") == [(5,)]


def test_stores_opened_together_on_a_fresh_database_migrate_once(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    start = threading.Barrier(len(stores))
    versions: list[int] = []
    failures: list[BaseException] = []

    def first_use(opened: LedgerStore) -> None:
        start.wait()
        try:
            versions.append(opened.schema_version())
        except BaseException as exc:
            failures.append(exc)

    # SQLite stores migrate as they are opened (above); PostgreSQL ones at first use, all at once here.
    threads = [threading.Thread(target=first_use, args=(opened,)) for opened in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert versions == [5, 5, 5, 5]
    migrations = backend.query("SELECT version FROM ledger_migrations ORDER BY version")
    assert migrations == [(1,), (2,), (3,), (4,), (5,)]


def test_sqlite_stores_opened_together_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    start = threading.Barrier(4)
    opened: list[SqliteLedgerStore] = []
    failures: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(SqliteLedgerStore(path))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert failures == []
        assert [each.schema_version() for each in opened] == [5, 5, 5, 5]
        versions = sqlite_query(path)("SELECT version FROM ledger_migrations ORDER BY version")
        assert versions == [(1,), (2,), (3,), (4,), (5,)]
    finally:
        for each in opened:
            each.close()


def feedback(feedback_id: str, request_id: str, team: str | None, at: float, **fields: Any) -> Feedback:
    values: dict[str, Any] = {"key_id": "k1", "rating": None, "label": None, "comment": None, **fields}
    return Feedback(feedback_id, request_id, at, team, **values)


def test_feedback_is_kept_only_for_a_request_of_the_raters_team(backend: Backend, store: LedgerStore) -> None:
    assert store.add_feedback(feedback("f1", "req-a", "alpha", DAY_2, rating=0.25, label="slow"))
    assert not store.add_feedback(feedback("f2", "req-a", "beta", DAY_2, rating=1.0))  # alpha's request
    assert not store.add_feedback(feedback("f3", "req-none", None, DAY_2, rating=1.0))  # no such request
    assert store.add_feedback(feedback("f4", "req-c", None, DAY_2, label="checked"))  # an admin: any team
    assert backend.query("SELECT id FROM feedback ORDER BY id") == [("f1",), ("f4",)]
    rated = {r.request_id: r for r in store.rated_requests()}
    assert (rated["req-a"].team, rated["req-a"].route, rated["req-a"].rating, rated["req-a"].label) == (
        "alpha", "local", 0.25, "slow",
    )  # fmt: skip
    assert (rated["req-c"].team, rated["req-c"].rating, rated["req-c"].label) == ("beta", None, "checked")


def test_the_latest_feedback_on_a_request_wins_and_old_feedback_can_be_left_out(store: LedgerStore) -> None:
    store.add_feedback(feedback("f1", "req-a", "alpha", DAY_1, rating=0.0))
    store.add_feedback(feedback("f2", "req-a", "alpha", DAY_2, rating=1.0))
    store.add_feedback(feedback("f3", "req-b", "alpha", DAY_1, rating=0.5))
    assert [(r.request_id, r.rating) for r in store.rated_requests()] == [("req-a", 1.0), ("req-b", 0.5)]
    assert [(r.request_id, r.rating) for r in store.rated_requests(since=DAY_2)] == [("req-a", 1.0)]


def test_decisions_are_a_policys_routed_records_with_their_signals(store: LedgerStore) -> None:
    store.insert([spend("s1", at=DAY_2 + 7200, policy="other", signals={"score": 0.5})])
    store.insert([spend("s2", at=DAY_2 + 7300, signals={"score": 0.75, "long": True})])
    decisions = store.decisions("default", since=DAY_2)
    # Record d was refused before routing (no rule): nothing to replay.
    assert [(d["request_id"], d["rule"], d["route"]) for d in decisions] == [
        ("req-c", "long", "local"), ("req-e", "short", "local"), ("req-s2", "short", "local"),
    ]  # fmt: skip
    assert json.loads(decisions[-1]["signals"]) == {"score": 0.75, "long": True}
    assert store.decisions("other")[0]["request_id"] == "req-s1"


ROLLUP_SUMS = (
    "SELECT SUM(requests), SUM(errors), SUM(cached_answers), SUM(prompt_tokens), SUM(completion_tokens),"
    " SUM(cost_usd), SUM(unpriced), SUM(reference_usd), SUM(saved_usd) FROM spend_hourly"
)


def test_the_hourly_rollup_sums_what_the_ledger_holds_once(backend: Backend, store: LedgerStore) -> None:
    store.insert(RECORDS)  # drained again after a crash: no record and no sum counts twice
    # requests, errors, cached, prompt, completion, cost, unpriced, reference, saved (as EVERYTHING)
    [sums] = backend.query(ROLLUP_SUMS)
    assert tuple(float(v) for v in sums) == (5, 1, 1, 540, 100, 2.25, 1, 4.5, 1.75)
    # One row per hour and group; a request refused before routing is stored with '' for its route.
    assert backend.query("SELECT COUNT(*) FROM spend_hourly WHERE route = '' AND team = 'beta'") == [(1,)]
    [(latencies,)] = backend.query("SELECT SUM(latency_le_0) FROM spend_hourly")
    assert latencies == 5  # every record in RECORDS took 0 ms


def test_migration_3_backfills_what_the_ledger_held_before_it(backend: Backend, store: LedgerStore) -> None:
    store.close()
    # Back to the state before migration 3, with the records already in the ledger.
    drop = ["DROP TRIGGER IF EXISTS ledger_rollup", "DROP TABLE spend_hourly"]
    if backend.name == "postgresql":
        drop = ["DROP TRIGGER IF EXISTS ledger_rollup ON ledger", "DROP TABLE spend_hourly"]
    for statement in [*drop, "DELETE FROM ledger_migrations WHERE version = 3"]:
        run_statement(backend, statement)
    reopened = backend.open()
    assert reopened.schema_version() == 5
    [sums] = backend.query(ROLLUP_SUMS)
    assert tuple(float(v) for v in sums) == (5, 1, 1, 540, 100, 2.25, 1, 4.5, 1.75)
    reopened.insert([spend("f", prompt_tokens=10, cost_usd=0.5, reference_usd=1.0)])  # the trigger is back
    assert backend.query("SELECT SUM(requests) FROM spend_hourly") == [(6,)]


def run_statement(backend: Backend, statement: str) -> None:
    with contextlib.suppress(psycopg.ProgrammingError):  # no rows to fetch: done all the same
        backend.query(statement)


def test_migration_4_says_the_records_before_it_came_through_chat_completions(
    backend: Backend, store: LedgerStore
) -> None:
    store.insert([spend("chat-1"), spend("messages-1", api="messages")])
    store.close()
    # Back to the state before migration 4, with records already in the ledger.
    undo = ["ALTER TABLE ledger DROP COLUMN api", "DELETE FROM ledger_migrations WHERE version = 4"]
    for statement in undo:
        run_statement(backend, statement)
    reopened = backend.open()
    assert reopened.schema_version() == 5
    assert backend.query("SELECT DISTINCT api FROM ledger") == [("chat.completions",)]
    reopened.insert([spend("responses-1", api="responses")])
    assert backend.query("SELECT api FROM ledger WHERE id = 'responses-1'") == [("responses",)]
    by_api = {row["api"]: row["requests"] for row in reopened.report(["api"])}
    assert by_api["responses"] == 1 and by_api["chat.completions"] >= 2


def test_migration_5_adds_priority_queue_admission_and_energy(backend: Backend, store: LedgerStore) -> None:
    """Records from before it are interactive, waited nothing and used unknown energy; the hourly rollup
    sums the energy of the records after it, once each."""
    store.insert([spend("before-5")])
    store.insert(
        [
            spend("e1", priority="deferrable", queue_ms=1250.0, admission="deferred: frontier busy",
                  energy_wh=0.25, reference_energy_wh=1.0),
            spend("e2", energy_wh=0.5, reference_energy_wh=0.5),
        ]
    )  # fmt: skip
    store.insert([spend("e1", energy_wh=0.25, reference_energy_wh=1.0)])  # drained twice: counted once
    rows = backend.query(
        "SELECT id, priority, queue_ms, admission, energy_wh, saved_energy_wh FROM ledger"
        " WHERE id IN ('before-5', 'e1', 'e2') ORDER BY id"
    )
    assert [tuple(row) for row in rows] == [
        ("before-5", "interactive", 0.0, None, None, None),
        ("e1", "deferrable", 1250.0, "deferred: frontier busy", 0.25, 0.75),
        ("e2", "interactive", 0.0, None, 0.5, 0.0),
    ]
    [(energy, reference)] = backend.query("SELECT SUM(energy_wh), SUM(reference_energy_wh) FROM spend_hourly")
    assert (float(energy), float(reference)) == (0.75, 1.5)
    by_priority = {row["priority"]: row["requests"] for row in store.report(["priority"])}
    assert by_priority["deferrable"] == 1 and by_priority["interactive"] >= 2
