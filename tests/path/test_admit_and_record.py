"""Accounting end to end, through the official client: the spend record of every request (streams
included), budgets that hold under concurrency across two replicas, rate limits, and recovery of
the spool after a `kill -9`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from gateway.config import Deployment
from gateway.energy import EnergyBook
from gateway.fakes.anthropic_upstream import AnthropicBehaviour, FakeAnthropicUpstream
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.ledger.ledger import Ledger
from gateway.ledger.spool import Spool
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.path.admit import Admitted
from gateway.path.answer import Answer
from gateway.path.cost import RoutePrices
from gateway.path.decide import Routing
from gateway.path.record import Ending, Recording
from gateway.policy.compile import CompiledPolicy
from gateway.policy.records import DecisionLog
from gateway.policy.schema import Policy
from gateway.pricing import PriceBook
from gateway.routing.catalog import Target
from gateway.state.redis_guard import RETRY_SHARED_AFTER
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TokenCounter
from gateway.wire import Caller, ChatRequest, Usage
from tests.conftest import RunningGateway, answers_ping, free_port, openai_deployment
from tests.gateway_process import start_gateway, write_spec

ANTHROPIC_KEY = "sk-ant-test-0123456789"
CLIENT_KEY = "sk-client-test"
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper"}]
ANSWER = "Once there was a keeper who kept the light burning through every storm of the year"
# USD per million tokens: big enough that a few tokens cost measurable money.
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 10000}


def ledger_rows(gw: RunningGateway, bg: BackgroundLoop, state_dir: Path) -> list[dict[str, Any]]:
    """Every record the gateway wrote, once it drained its spool into its SQLite ledger."""
    bg.run(gw.app.services.ledger.drain())
    return read_ledger(state_dir / "ledger.sqlite")


def read_ledger(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute("SELECT * FROM ledger ORDER BY at")]
    db.close()
    return rows


@pytest.fixture
def anthropic(bg: BackgroundLoop) -> Iterator[FakeAnthropicUpstream]:
    upstream = FakeAnthropicUpstream(api_key=ANTHROPIC_KEY)
    upstream.default = AnthropicBehaviour(content=ANSWER, chunks=6)
    bg.run(upstream.start())
    yield upstream
    bg.run(upstream.stop())


@pytest.mark.parametrize("upstream_format", ["openai", "anthropic"])
def test_a_streamed_answer_records_the_same_tokens_and_cost_as_a_plain_one(
    upstream_format: str,
    upstreams: Callable[..., FakeOpenAIUpstream],
    anthropic: FakeAnthropicUpstream,
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    if upstream_format == "openai":
        deployment = openai_deployment(upstreams(Behaviour(content=ANSWER, chunks=6)), price=PRICE)
    else:
        deployment = {
            "provider": "anthropic", "model": "claude-haiku-4-5", "api_base": anthropic.base_url,
            "api_key_env": "ANTHROPIC_API_KEY", "price": PRICE,
        }  # fmt: skip
    spec = {
        "deployments": {"model": deployment},
        "routes": {"frontier": ["model"]},
        "default_route": "frontier",
    }
    gw = gateway(spec, environ={"ANTHROPIC_API_KEY": ANTHROPIC_KEY}, state_dir=tmp_path / "state")
    client = gw.client()
    plain = client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=100)
    # The client does not ask for usage: the gateway asks the upstream anyway, for the record.
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="auto", messages=MESSAGES, max_tokens=100, stream=True
        )
        if chunk.choices
    )
    assert streamed == plain.choices[0].message.content

    first, second = ledger_rows(gw, bg, tmp_path / "state")
    assert (first["stream"], second["stream"]) == (0, 1)
    for row in (first, second):
        assert row["status"] == 200 and row["estimated"] == 0
        assert row["route"] == "frontier" and row["deployment"] == "model" and row["rule"] == "default"
    assert plain.usage is not None and plain.usage.completion_tokens > 0
    assert first["prompt_tokens"] == second["prompt_tokens"] == plain.usage.prompt_tokens
    assert first["completion_tokens"] == second["completion_tokens"] == plain.usage.completion_tokens
    expected = (plain.usage.prompt_tokens * 1000 + plain.usage.completion_tokens * 10000) / 1e6
    assert first["cost_usd"] == second["cost_usd"] == pytest.approx(expected)


def test_a_stream_without_upstream_usage_is_counted_and_marked_estimated(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER, chunks=6, usage=False))
    spec = {
        "deployments": {"model": openai_deployment(upstream, price=PRICE)},
        "routes": {"frontier": ["model"]},
        "default_route": "frontier",
    }
    gw = gateway(spec, state_dir=tmp_path / "state")
    list(gw.client().chat.completions.create(model="auto", messages=MESSAGES, stream=True))
    (row,) = ledger_rows(gw, bg, tmp_path / "state")
    assert row["estimated"] == 1
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["cost_usd"] > 0


def test_the_record_holds_latencies_signals_and_savings_but_no_text(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER, latency=0.05))
    spec = {
        "deployments": {
            "big": openai_deployment(upstream, price={"input_per_mtok": 10, "output_per_mtok": 30}),
            "small": openai_deployment(upstream, price={"input_per_mtok": 1, "output_per_mtok": 2}),
        },
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"story": {"kind": "keywords", "words": ["story"]}},
        "rules": [{"name": "stories-go-local", "when": {"signal": "story", "eq": True}, "route": "local"}],
        "default_route": "frontier",
        "reference_route": "frontier",
    }
    gw = gateway(spec, state_dir=tmp_path / "state", api_keys=[CLIENT_KEY])
    answer = gw.client(api_key=CLIENT_KEY).chat.completions.create(model="auto", messages=MESSAGES)
    (row,) = ledger_rows(gw, bg, tmp_path / "state")
    assert row["team"] == "default" and row["key_id"].startswith("env-")
    assert (row["route"], row["rule"], row["deployment"]) == ("local", "stories-go-local", "small")
    assert row["signals"] == '{"story":true}'
    assert answer.usage is not None
    prompt, completion = answer.usage.prompt_tokens, answer.usage.completion_tokens
    assert row["cost_usd"] == pytest.approx((prompt * 1 + completion * 2) / 1e6)
    assert row["reference_usd"] == pytest.approx((prompt * 10 + completion * 30) / 1e6)
    assert row["saved_usd"] == pytest.approx(row["reference_usd"] - row["cost_usd"])
    assert row["upstream_ms"] >= 50 and row["latency_ms"] >= row["upstream_ms"]
    assert row["overhead_ms"] == pytest.approx(row["latency_ms"] - row["upstream_ms"])
    assert 0 < row["ttfb_ms"] <= row["latency_ms"]
    assert row["body"] is None
    stored = (tmp_path / "state" / "ledger.sqlite").read_bytes()
    assert b"lighthouse" not in stored and b"keeper who kept" not in stored


def test_a_failed_request_is_recorded_with_its_error_and_no_cost(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    upstream = upstreams(Behaviour(status=500))
    spec = {
        "deployments": {"model": openai_deployment(upstream, price=PRICE, retries=0)},
        "routes": {"frontier": ["model"]},
        "default_route": "frontier",
    }
    gw = gateway(spec, state_dir=tmp_path / "state")
    with pytest.raises(openai.APIStatusError):
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    (row,) = ledger_rows(gw, bg, tmp_path / "state")
    assert row["status"] >= 500 and row["error"]
    assert row["cost_usd"] == 0 and row["prompt_tokens"] == 0


# ---- budgets -------------------------------------------------------------------------------------


def budgeted(upstream: FakeOpenAIUpstream, **team_budget: Any) -> dict[str, Any]:
    return {
        "deployments": {
            "big": openai_deployment(upstream, price=PRICE),
            "free": openai_deployment(upstream, price={"input_per_mtok": 0, "output_per_mtok": 0}),
        },
        "routes": {"frontier": ["big"], "local": ["free"]},
        "default_route": "frontier",
        "budgets": {"teams": {"default": team_budget}},
    }


def ask(gw: RunningGateway, model: str = "auto", key: str = CLIENT_KEY, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 10, **extra},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_an_exhausted_budget_gets_a_429_naming_it_and_free_routes_still_answer(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    # Each answer costs about $0.12 here (12 prompt tokens at $0.001, 10 answer tokens at $0.01).
    upstream = upstreams(Behaviour(content="one two three four five six seven eight nine ten"))
    gw = gateway(budgeted(upstream, daily_usd=0.30), api_keys=[CLIENT_KEY])
    assert ask(gw).status_code == 200
    assert ask(gw).status_code == 200
    refused = ask(gw)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "team default daily budget ($0.3)" in error["message"] and "resets at" in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    # A free route costs nothing, so no budget can stop it.
    free = ask(gw, model="local")
    assert free.status_code == 200 and free.headers["x-gateway-route"] == "local"


def test_a_client_that_leaves_mid_call_releases_its_reservation(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    upstream = upstreams(Behaviour(content="one two three four five six seven eight nine ten"))
    upstream.script(Behaviour(latency=3.0))  # the first call is slow: its client gives up
    # Room for one worst case (~$0.13) only: a reservation that leaked would refuse the next request.
    gw = gateway(budgeted(upstream, daily_usd=0.15), api_keys=[CLIENT_KEY], state_dir=tmp_path / "state")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "auto", "messages": MESSAGES, "max_tokens": 10},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            timeout=0.5,
        )
    time.sleep(0.5)  # the gateway notices the disconnect, cancels the call and settles
    assert ask(gw).status_code == 200
    rows = ledger_rows(gw, bg, tmp_path / "state")
    assert [(row["status"], row["error"]) for row in rows] == [(499, "client_disconnected"), (200, None)]


def test_a_policy_can_send_a_team_over_budget_to_a_free_route(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams(Behaviour(content="one two three four five six seven eight nine ten"))
    gw = gateway(budgeted(upstream, daily_usd=0.15, when_exhausted="local"), api_keys=[CLIENT_KEY])
    first, second = ask(gw), ask(gw)
    assert first.headers["x-gateway-route"] == "frontier"
    assert second.status_code == 200
    assert second.headers["x-gateway-route"] == "local"
    assert second.headers["x-gateway-rule"] == "default (budget exhausted)"


def test_the_budget_signal_lets_rules_route_before_the_budget_runs_out(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams(Behaviour(content="one two three four five six seven eight nine ten"))
    spec = budgeted(upstream, daily_usd=1.0)
    spec["signals"] = {"spent": {"kind": "budget_spent"}}
    spec["rules"] = [{"name": "thrifty", "when": {"signal": "spent", "gte": 0.2}, "route": "local"}]
    gw = gateway(spec, api_keys=[CLIENT_KEY])
    assert ask(gw).headers["x-gateway-rule"] == "default"  # nothing spent yet
    time.sleep(0.2)  # the settlement runs just after the answer
    assert ask(gw).headers["x-gateway-rule"] == "default"  # ~$0.12 of $1 spent
    time.sleep(0.2)
    assert ask(gw).headers["x-gateway-rule"] == "thrifty"  # ~$0.24 spent


def test_two_replicas_sharing_redis_hold_a_budget_under_200_concurrent_requests(
    upstreams: Callable[..., FakeOpenAIUpstream], redis_url: str, tmp_path: Path
) -> None:
    """$1 left, 200 requests at once each able to cost up to $0.10, through two gateway processes:
    what they settle stays within $1 plus one request."""
    upstream = upstreams(Behaviour(content="one two three four five", latency=0.05))
    spec = budgeted(upstream, daily_usd=1.0)
    settings = {
        **write_spec(spec, tmp_path / "policy"),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": f"test:{uuid.uuid4().hex}:",
    }
    replicas = [
        start_gateway(
            {**settings, "GATEWAY_STATE_DIR": str(tmp_path / f"state-{i}")}, tmp_path / f"gw-{i}.log"
        )
        for i in range(2)
    ]
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}

        def send(index: int) -> int:
            response = httpx.post(
                f"{replicas[index % 2].base_url}/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
                timeout=60,
            )
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
            statuses = list(pool.map(send, range(200)))
    finally:
        for replica in replicas:
            replica.stop()  # a clean stop drains the spool into each ledger
    assert set(statuses) <= {200, 429}
    rows = [row for i in range(2) for row in read_ledger(tmp_path / f"state-{i}" / "ledger.sqlite")]
    answered = [row for row in rows if row["status"] == 200]
    assert len(answered) == statuses.count(200)
    assert {row["deployment"] for row in answered} == {"big"}
    # Worst case per request: 4 prompt tokens at $0.001 + 9 answer tokens at $0.01 = $0.094.
    spent = sum(row["cost_usd"] for row in answered)
    assert spent <= 1.0 + 0.10
    assert spent > 0.8, "the budget should be nearly used, not refused early"
    assert statuses.count(429) > 0
    assert {row["error"] for row in rows if row["status"] == 429} == {"budget_exceeded"}


def test_with_redis_unreachable_requests_are_served_and_counted_by_the_replica_alone(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    """Budgets and limits fail open (by default) rather than stopping all traffic: open, not unlimited,
    for this replica then counts on its own."""
    spec = budgeted(upstreams(Behaviour(content="one two three four five six seven eight nine ten")))
    spec["rate_limits"] = {"teams": {"*": {"requests_per_minute": 3}}}
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gw = gateway(spec, api_keys=[CLIENT_KEY], redis_url=dead, state_dir=tmp_path / "state")
    statuses = [ask(gw, model="local").status_code for _ in range(4)]  # free: only the rate limit counts
    assert statuses == [200, 200, 200, 429]
    assert [row["status"] for row in ledger_rows(gw, bg, tmp_path / "state")] == statuses


class OwnRedis:
    """A redis-server of the test's own, which the test can stop (saving its data) and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
        ]
        self.process = subprocess.Popen(
            [*command, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not answers_ping(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """SHUTDOWN SAVE: the data is on disk for the next start, as with any persistent Redis."""
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis.from_url(self.url).shutdown(save=True)
        if self.process is not None:
            self.process.wait(timeout=10)

    def budget_nano(self) -> int:
        with redis.Redis.from_url(self.url) as client:
            return sum(int(client.get(key) or 0) for key in client.keys("*budget:*"))


def test_a_budget_holds_through_a_redis_outage_and_the_shared_total_is_right_after_it(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    """$0.30 a day and about $0.12 an answer: two answers fit. One is counted in Redis; Redis goes
    away; this replica allows one more from the spend it last saw, and refuses the third. When Redis
    is back (the gateway reconnects by itself) the answer counted alone is added to it first, so it
    refuses too, and its total equals the ledger's."""
    upstream = upstreams(Behaviour(content="one two three four five six seven eight nine ten"))
    own = OwnRedis(tmp_path)
    own.start()
    try:
        gw = gateway(
            budgeted(upstream, daily_usd=0.30),
            api_keys=[CLIENT_KEY],
            redis_url=own.url,
            state_dir=tmp_path / "s",
        )
        assert ask(gw).status_code == 200
        counted = own.budget_nano()
        assert counted > 0
        own.stop()
        assert ask(gw).status_code == 200  # counted by this replica alone
        refused = ask(gw)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        own.start()
        time.sleep(RETRY_SHARED_AFTER)  # requests count locally that long after Redis last failed
        again = ask(gw)
        assert again.status_code == 429, "the spend from the outage was not added before checking"
        rows = ledger_rows(gw, bg, tmp_path / "s")
        assert [row["status"] for row in rows] == [200, 200, 429, 429]
        assert own.budget_nano() == sum(round(row["cost_usd"] * 1e9) for row in rows)
    finally:
        own.stop()


class BlackHole:
    """A TCP server on loopback that takes connections and whatever is sent, and never answers: a Redis
    that hangs instead of refusing."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.server.getsockname()[1]}/0"
        self.received = bytearray()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                self.connections.append(connection)
                threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    def _swallow(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := connection.recv(65536):
                self.received += data

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


def test_a_hung_redis_is_waited_for_once_not_on_every_request(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An attempt on a hung Redis costs its 1 s timeout; after one fails, or while the background probe
    has not seen Redis answer, requests count locally without asking it (and say so once a second,
    not once a request)."""
    spec = budgeted(upstreams())
    spec["rate_limits"] = {"teams": {"*": {"requests_per_minute": 100}}}
    hole = BlackHole()
    try:
        gw = gateway(spec, api_keys=[CLIENT_KEY], redis_url=hole.url, state_dir=tmp_path / "state")
        took = []
        with caplog.at_level(logging.WARNING, logger="gateway.state.redis"):
            for _ in range(8):
                started = time.monotonic()
                assert ask(gw, model="local").status_code == 200
                took.append(time.monotonic() - started)
    finally:
        hole.close()
    counted_alone = [
        r.getMessage() for r in caplog.records if "counted by this replica alone" in r.getMessage()
    ]
    assert sum(1 for seconds in took if seconds > 0.9) <= 1, took  # at most the first waits
    assert 1 <= len(counted_alone) <= 2, counted_alone


@pytest.mark.parametrize("limits", ["budgets", "rate_limits"])
def test_a_policy_that_fails_closed_refuses_with_503_while_redis_is_unreachable(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
    limits: str,
) -> None:
    """`when_unavailable: closed`: while the counters are away, nothing is answered uncounted."""
    upstream = upstreams()
    spec = budgeted(upstream, daily_usd=1.0)
    if limits == "budgets":
        spec["budgets"]["when_unavailable"] = "closed"
    else:
        spec["rate_limits"] = {"teams": {"*": {"requests_per_minute": 100}}, "when_unavailable": "closed"}
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gw = gateway(spec, api_keys=[CLIENT_KEY], redis_url=dead, state_dir=tmp_path / "state")
    refused = ask(gw)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "limits_unavailable"
    assert upstream.requests == []
    assert [row["error"] for row in ledger_rows(gw, bg, tmp_path / "state")] == ["limits_unavailable"]


# ---- rate limits ---------------------------------------------------------------------------------


def test_requests_per_minute_are_limited_with_retry_after(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    spec = budgeted(upstreams())
    spec.pop("budgets")
    spec["rate_limits"] = {"keys": {"*": {"requests_per_minute": 3}}}
    gw = gateway(spec, api_keys=[CLIENT_KEY, "sk-other"])
    assert [ask(gw).status_code for _ in range(3)] == [200, 200, 200]
    limited = ask(gw)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute" in limited.json()["error"]["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Another key has its own window.
    assert ask(gw, key="sk-other").status_code == 200


def test_tokens_per_minute_count_prompt_and_answer(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams(Behaviour(content="one two three four five six seven eight nine ten"))
    spec = budgeted(upstream)
    spec.pop("budgets")
    spec["rate_limits"] = {"teams": {"default": {"tokens_per_minute": 40}}}
    gw = gateway(spec, api_keys=[CLIENT_KEY])
    # ~12 prompt tokens admitted, 10 answer tokens added after: the second request fits, the third not.
    assert ask(gw).status_code == 200
    time.sleep(0.2)
    assert ask(gw).status_code == 200
    time.sleep(0.2)
    third = ask(gw)
    assert third.status_code == 429 and "tokens per minute" in third.json()["error"]["message"]


# ---- crash ---------------------------------------------------------------------------------------


def test_every_answer_a_client_received_is_in_the_ledger_after_kill_9(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER, latency=0.01))
    spec = {
        "deployments": {"model": openai_deployment(upstream, price=PRICE)},
        "routes": {"frontier": ["model"]},
        "default_route": "frontier",
    }
    settings = {**write_spec(spec, tmp_path / "policy"), "GATEWAY_STATE_DIR": str(tmp_path / "state")}
    gw = start_gateway(settings, tmp_path / "gw.log")
    answered: list[str] = []
    stop_at = time.monotonic() + 3.0

    def load(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            sequence = 0
            while time.monotonic() < stop_at:
                request_id = f"w{worker}-{sequence}"
                sequence += 1
                stream = sequence % 2 == 0
                try:
                    response = client.post(
                        f"{gw.base_url}/chat/completions",
                        json={"model": "auto", "messages": MESSAGES, "stream": stream},
                        headers={"x-request-id": request_id},
                    )
                except httpx.TransportError:
                    return  # the gateway is gone
                complete = response.status_code == 200 and (not stream or "data: [DONE]" in response.text)
                if complete:
                    answered.append(request_id)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        workers = [pool.submit(load, worker) for worker in range(8)]
        time.sleep(1.5)
        gw.kill()
        for worker in workers:
            worker.result()
    assert len(answered) > 20

    restarted = start_gateway(settings, tmp_path / "gw.log")  # drains what the spool holds at start
    restarted.stop()
    recorded = {row["request_id"] for row in read_ledger(tmp_path / "state" / "ledger.sqlite")}
    assert set(answered) <= recorded


# ---- body logging --------------------------------------------------------------------------------


def test_a_policy_can_log_bodies_redacted_for_plain_and_streamed_answers(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    upstream = upstreams(
        Behaviour(content="Noted: write to ops@example.com with card 4111 1111 1111 1111", chunks=4)
    )
    spec = {
        "deployments": {"model": openai_deployment(upstream)},
        "routes": {"frontier": ["model"]},
        "default_route": "frontier",
        "log_bodies": True,
    }
    gw = gateway(spec, state_dir=tmp_path / "state")
    secret = [{"role": "user", "content": "I am ana@example.com, key sk-proj-AbCdEf0123456789xyz"}]
    client = gw.client()
    client.chat.completions.create(model="auto", messages=secret)
    list(client.chat.completions.create(model="auto", messages=secret, stream=True))
    rows = ledger_rows(gw, bg, tmp_path / "state")
    assert len(rows) == 2
    for row in rows:
        logged = orjson.loads(row["body"])
        assert logged == {
            "messages": [{"role": "user", "content": "I am [EMAIL], key [API_KEY]"}],
            "answer": "Noted: write to [EMAIL] with card [CARD]",
        }
    stored = (tmp_path / "state" / "ledger.sqlite").read_bytes()
    assert b"ana@example.com" not in stored and b"AbCdEf0123456789" not in stored


# ---- cached answers ------------------------------------------------------------------------------


def test_a_cached_answer_is_recorded_at_zero_with_its_saving(tmp_path: Path, bg: BackgroundLoop) -> None:
    """An answer from the cache (issue 5) is recorded at $0, and what the reference route would have
    charged is counted as saved."""
    deployments = {"big": Deployment.model_validate({"provider": "openai", "model": "x", "price": PRICE})}
    policy = Policy.model_validate(
        {
            "routes": {"frontier": {"deployments": ["big"]}},
            "default_route": "frontier",
            "reference_route": "frontier",
        }
    )
    ledger = Ledger(Spool(tmp_path / "spool"), SqliteLedgerStore(tmp_path / "ledger.sqlite"))
    decisions = DecisionLog(tmp_path / "decisions.sqlite")
    prices = RoutePrices(PriceBook(deployments, {}))
    energy = EnergyBook(deployments)
    recording = Recording(prices, TokenCounter(), ledger, Telemetry(), decisions, energy)
    request = ChatRequest(body={"model": "auto", "messages": MESSAGES}, request_id="r1")
    trail = recording.begin(request, Caller(team="search"), time.perf_counter())
    routing = Routing(Target("frontier", (), False), "default", None, CompiledPolicy("p", policy, {}, ()))
    cached = Answer("frontier", "big", "default", None, 0.0, cache="semantic")
    admitted = Admitted(request, "search", None, trail.at)
    record = recording.end(trail, routing, admitted, cached, None, Ending(usage=Usage(12, 10, 22)))
    assert record.cache == "semantic"
    assert record.cost_usd == 0.0
    # No model ran: no energy used, and the reference's (remote defaults, by tokens) all saved.
    assert record.energy_wh == 0.0
    assert record.reference_energy_wh == pytest.approx((12 * 0.24 + 10 * 0.6) / 1000)
    assert record.reference_usd == pytest.approx((12 * 1000 + 10 * 10000) / 1e6)
    assert record.saved_usd == record.reference_usd
    bg.run(ledger.close())
    decisions.close()
    (row,) = read_ledger(tmp_path / "ledger.sqlite")
    assert (row["cache"], row["cost_usd"], row["saved_usd"]) == ("semantic", 0.0, pytest.approx(0.112))
