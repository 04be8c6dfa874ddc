"""Spend and budgets at the scale an operator probes them: a burst of 200 against a dollar budget on
one gateway, two replicas of 100 each on one Redis and one PostgreSQL, 50 streams half of which the
client cuts, and `kill -9` with 100 requests in flight on each ledger backend. Gateways run as
processes (`python -m gateway serve`) against the fake upstream, priced so that tokens cost real
money; budgets count in a real Redis."""

from __future__ import annotations

import concurrent.futures
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from gateway.bench.ledger import scratch_postgres
from gateway.fakes.openai_upstream import FakeOpenAIUpstream, sized_answer
from gateway.fakes.script import Behaviour, prompt_tokens, word_count
from tests.conftest import free_port, openai_deployment
from tests.gateway_process import GatewayProcess, start_gateway, write_spec

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CLIENT_KEY = "sk-client-stress"
# $1,000 per million tokens either way: a token costs $0.001.
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}
TOKEN_USD = 0.001
BUDGET_USD = 0.60
ANSWER = "one two three four five six seven eight nine ten"
MAX_TOKENS = 12


def budgeted_spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream, price=PRICE)},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "budgets": {"teams": {"default": {"daily_usd": BUDGET_USD}}},
        # Counted in Redis too (never reached): each request makes more calls on the shared pool.
        "rate_limits": {"teams": {"default": {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9}}},
    }


# A function the client offers: the upstream bills its definition as prompt tokens.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_lighthouse",
            "description": "Find the nearest lighthouse to a harbour and tell its keeper's name and hours",
            "parameters": {
                "type": "object",
                "properties": {"harbour": {"type": "string", "description": "the harbour's name"}},
                "required": ["harbour"],
            },
        },
    }
]
BODY = {
    "model": "auto",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": TOOLS,
    "max_tokens": MAX_TOKENS,
}


def billed_usd_at_most() -> float:
    """The most one request of the burst can be billed: the fake's count of its prompt (message and
    tool definitions) and max_tokens, at a token's price."""
    return (prompt_tokens(BODY["messages"], TOOLS) + MAX_TOKENS) * TOKEN_USD


def ask(url: str, body: dict[str, Any], request_id: str | None = None) -> int:
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    try:
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code
    except httpx.TransportError:
        return 0


def burst(urls: list[str], count: int, body: dict[str, Any]) -> list[int]:
    """`count` requests at once, spread over `urls`, all released together."""
    start = threading.Barrier(count)

    def send(index: int) -> int:
        start.wait()
        return ask(urls[index % len(urls)], body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(send, range(count)))


def sqlite_rows(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM ledger")]
    finally:
        db.close()


def postgres_rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return list(cursor.execute("SELECT * FROM ledger"))


def redis_budget_usd(url: str, prefix: str) -> float:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}budget:team:default:day:*"))
        return sum(int(client.get(key) or 0) for key in keys) / 1e9


def figure(text: str) -> None:
    """What the probe measured, printed for the closing note's table (`pytest -s`)."""
    print(f"\n[figure] {text}")


def fell_back_to_local_counting(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "counted by this replica alone" in line]


@contextmanager
def gateways(settings: dict[str, str], tmp_path: Path, count: int) -> Iterator[list[GatewayProcess]]:
    started = [
        start_gateway(
            {**settings, "GATEWAY_STATE_DIR": str(tmp_path / f"state-{n}")}, tmp_path / f"gw-{n}.log"
        )
        for n in range(count)
    ]
    try:
        yield started
    finally:
        for gateway in started:
            gateway.stop()  # a clean stop drains each spool into the ledger


# ---- bursts against a budget ---------------------------------------------------------------------


def test_a_burst_of_200_on_one_gateway_overspends_its_budget_by_at_most_one_request(
    upstreams: Callable[..., FakeOpenAIUpstream], redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """200 requests at once against a $0.60 budget in Redis: the gateway's own connection pool must
    not turn the burst into a Redis "outage" (which fails open and doubled the spend before)."""
    upstream = upstreams(Behaviour(content=ANSWER, latency=0.05))
    settings = {
        **write_spec(budgeted_spec(upstream), tmp_path / "policy"),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    with gateways(settings, tmp_path, 1) as (gateway,):
        statuses = burst([gateway.url], 200, BODY)
    rows = sqlite_rows(tmp_path / "state-0" / "ledger.sqlite")
    spent = sum(row["cost_usd"] or 0 for row in rows)
    figure(
        f"burst 200 on one gateway: ${spent:.3f} spent against ${BUDGET_USD}, {statuses.count(200)} answered"
    )
    assert set(statuses) <= {200, 429}, statuses
    assert fell_back_to_local_counting(tmp_path / "gw-0.log") == []
    assert spent <= BUDGET_USD + billed_usd_at_most()
    assert spent > BUDGET_USD / 2, "the budget should be used, not refused early"
    assert redis_budget_usd(redis_url, redis_prefix) == pytest.approx(spent, abs=1e-9)
    assert sum(1 for row in rows if row["status"] == 200) == statuses.count(200)


def test_two_replicas_of_100_on_redis_and_postgres_overspend_by_at_most_one_request_each(
    upstreams: Callable[..., FakeOpenAIUpstream], redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER, latency=0.05))
    with scratch_postgres(POSTGRES) as database:
        settings = {
            **write_spec(budgeted_spec(upstream), tmp_path / "policy"),
            "GATEWAY_API_KEYS": CLIENT_KEY,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_PREFIX": redis_prefix,
            "GATEWAY_DATABASE_URL": database,
        }
        with gateways(settings, tmp_path, 2) as replicas:
            statuses = burst([replica.url for replica in replicas], 200, BODY)
        rows = postgres_rows(database)
    spent = sum(row["cost_usd"] or 0 for row in rows)
    figure(f"2 replicas x 100: ${spent:.3f} spent against ${BUDGET_USD}, {statuses.count(200)} answered")
    assert set(statuses) <= {200, 429}, statuses
    for n in range(2):
        assert fell_back_to_local_counting(tmp_path / f"gw-{n}.log") == []
    assert spent <= BUDGET_USD + 2 * billed_usd_at_most()
    assert spent > BUDGET_USD / 2
    assert redis_budget_usd(redis_url, redis_prefix) == pytest.approx(spent, abs=1e-9)


# ---- streams the client cuts ---------------------------------------------------------------------

STREAM_WORDS = 120
CHUNKS = 20
CUT_AFTER = 6  # content chunks the client reads before it hangs up


def read_stream(url: str, index: int, cut: bool) -> tuple[str, bool]:
    """One streamed request; (the text received, whether it saw [DONE]). A cut client closes its
    connection after CUT_AFTER content chunks."""
    body = {
        "model": "auto",
        "stream": True,
        "messages": [{"role": "user", "content": f"tell me a long story number {index}"}],
        "max_tokens": 2 * STREAM_WORDS,
    }
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": f"stream-{index}"}
    text, chunks = [], 0
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "data: [DONE]":
                return "".join(text), True
            if not line.startswith("data: "):
                continue
            for choice in orjson.loads(line[6:]).get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
                    chunks += 1
            if cut and chunks >= CUT_AFTER:
                return "".join(text), False  # leaving the block closes the connection mid-stream
    return "".join(text), False


def test_streams_cut_by_their_clients_are_paid_for_what_they_produced(
    upstreams: Callable[..., FakeOpenAIUpstream], redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """50 streams at once, every other one cut by its client after 6 content chunks: the cut ones are
    recorded with their prompt and the completion tokens produced up to the cut, priced, marked
    estimated, and charged to the budget."""
    story = sized_answer(STREAM_WORDS)  # words of one token each, as the fake counts them
    upstream = upstreams(Behaviour(content=story, chunks=CHUNKS, chunk_delay=0.05))
    spec = budgeted_spec(upstream)
    spec["budgets"] = {"teams": {"default": {"daily_usd": 100.0}}}
    settings = {
        **write_spec(spec, tmp_path / "policy"),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    with gateways(settings, tmp_path, 1) as (gateway,), concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: read_stream(gateway.url, i, cut=i % 2 == 1), range(50)))
        time.sleep(1.0)  # the cut streams' records and settlements
    rows = {row["request_id"]: row for row in sqlite_rows(tmp_path / "state-0" / "ledger.sqlite")}
    cut = [rows[f"stream-{i}"] for i in range(1, 50, 2) if f"stream-{i}" in rows]
    received = [word_count(results[i][0]) for i in range(1, 50, 2) if f"stream-{i}" in rows]
    recorded = [row["completion_tokens"] for row in cut]
    figure(f"cut streams: completion tokens recorded {recorded[:5]}, received {received[:5]}")
    figure(f"cut streams: costs {[row['cost_usd'] for row in cut[:5]]}")
    assert len(rows) == 50
    for index, (text, done) in enumerate(results):
        row = rows[f"stream-{index}"]
        received = word_count(text)  # the fake's tokens: one a word
        if index % 2 == 0:
            assert done and row["status"] == 200 and not row["estimated"]
            assert row["completion_tokens"] == STREAM_WORDS
            continue
        assert not done and row["status"] == 499 and row["error"] == "client_disconnected"
        assert row["estimated"] == 1
        assert row["prompt_tokens"] > 0
        assert abs(row["completion_tokens"] - received) <= 0.1 * received, (row, received)
        expected = (row["prompt_tokens"] + row["completion_tokens"]) * TOKEN_USD
        assert row["cost_usd"] == pytest.approx(expected)
    ledger_usd = sum(row["cost_usd"] for row in rows.values())
    assert redis_budget_usd(redis_url, redis_prefix) == pytest.approx(ledger_usd, abs=1e-9)


def test_a_plain_request_whose_client_leaves_mid_call_is_paid_for_its_prompt(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER, latency=5.0))
    spec = {**budgeted_spec(upstream), "budgets": {}}
    settings = {**write_spec(spec, tmp_path / "policy"), "GATEWAY_API_KEYS": CLIENT_KEY}
    with gateways(settings, tmp_path, 1) as (gateway,):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": "a question of six words"}]},
                headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "left"},
                timeout=0.5,
            )
        time.sleep(0.5)
    (row,) = sqlite_rows(tmp_path / "state-0" / "ledger.sqlite")
    assert (row["request_id"], row["status"], row["error"]) == ("left", 499, "client_disconnected")
    assert row["deployment"] == "big" and row["estimated"] == 1
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * TOKEN_USD)


# ---- kill -9 -------------------------------------------------------------------------------------

IN_FLIGHT = 100
ASKED = re.compile(r"question (q-\d+)")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_after_kill_9_every_upstream_call_has_a_ledger_record(
    backend: str, upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    """20 requests answered, then 100 in flight (the upstream has them all) when the gateway is killed:
    after a restart, every request the upstream saw is in the ledger once — answered, or interrupted
    with its prompt's estimated cost."""
    upstream = upstreams(Behaviour(content=ANSWER))
    spec = {**budgeted_spec(upstream), "budgets": {}}
    with ledger_database(backend) as database:
        settings = {**write_spec(spec, tmp_path / "policy"), "GATEWAY_API_KEYS": CLIENT_KEY}
        settings["GATEWAY_STATE_DIR"] = str(tmp_path / "state")
        if database is not None:
            settings["GATEWAY_DATABASE_URL"] = database
        gateway = start_gateway(settings, tmp_path / "gw.log")

        def send(n: int, stream: bool = False) -> int:
            body = {
                "model": "auto",
                "stream": stream,
                "messages": [{"role": "user", "content": f"question q-{n}"}],
            }
            return ask(gateway.url, body, request_id=f"q-{n}")

        assert [send(n) for n in range(20)] == [200] * 20
        upstream.default = Behaviour(content=ANSWER, latency=30.0)
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            pending = [pool.submit(send, n, n % 2 == 0) for n in range(20, 20 + IN_FLIGHT)]
            deadline = time.monotonic() + 30
            while upstream.request_count < 20 + IN_FLIGHT and time.monotonic() < deadline:
                time.sleep(0.05)
            assert upstream.request_count == 20 + IN_FLIGHT
            gateway.kill()
            assert all(future.result() != 200 for future in pending)
        start_gateway(settings, tmp_path / "gw.log").stop()  # the restart drains what was left
        rows = postgres_rows(database) if database else sqlite_rows(tmp_path / "state" / "ledger.sqlite")
    called = {
        match.group(1)
        for request in upstream.requests
        for match in [ASKED.search(str(request.body))]
        if match
    }
    assert len(called) == 20 + IN_FLIGHT
    recorded = [row["request_id"] for row in rows]
    missing = called - set(recorded)
    figure(f"kill -9 ({backend}): {len(called)} upstream calls, {len(missing)} without a record")
    assert sorted(recorded) == sorted(called)  # each once
    interrupted = [row for row in rows if row["error"] == "interrupted"]
    assert len(interrupted) == IN_FLIGHT
    for row in interrupted:
        assert row["status"] == 500 and row["estimated"] == 1 and row["deployment"] == "big"
        assert row["prompt_tokens"] > 0 and row["cost_usd"] == pytest.approx(row["prompt_tokens"] * TOKEN_USD)


@contextmanager
def ledger_database(backend: str) -> Iterator[str | None]:
    """None for SQLite in the state directory, else a scratch PostgreSQL database's URL."""
    if backend == "sqlite":
        yield None
        return
    with scratch_postgres(POSTGRES) as database:
        yield database


# ---- restarts ------------------------------------------------------------------------------------


def test_a_restarted_gateway_without_redis_still_knows_what_its_budgets_spent(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    """The embedded default counts budgets in process: a restart must not hand the day's budget out
    again (the counters start from the ledger)."""
    upstream = upstreams(Behaviour(content=ANSWER))
    settings = {
        **write_spec(budgeted_spec(upstream), tmp_path / "policy"),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
    }
    gateway = start_gateway(settings, tmp_path / "gw.log")
    try:
        statuses = [ask(gateway.url, BODY) for _ in range(40)]
    finally:
        gateway.stop()
    assert statuses.count(200) > 5 and statuses[-1] == 429
    spent = sum(row["cost_usd"] or 0 for row in sqlite_rows(tmp_path / "state" / "ledger.sqlite"))
    assert BUDGET_USD / 2 < spent <= BUDGET_USD

    restarted = start_gateway(settings, tmp_path / "gw.log")
    try:
        assert [ask(restarted.url, BODY) for _ in range(3)] == [429, 429, 429]
    finally:
        restarted.stop()
    # A replica whose Redis is away from the start counts alone (the policy fails open) from the ledger.
    alone = start_gateway(
        {**settings, "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, tmp_path / "gw.log"
    )
    try:
        assert [ask(alone.url, BODY) for _ in range(3)] == [429, 429, 429]
    finally:
        alone.stop()
    assert fell_back_to_local_counting(tmp_path / "gw.log")
