"""A database that holds the keys and the ledger, accepts connections and then never answers (PostgreSQL
frozen, behind a black-hole proxy) must not stop the gateway: the keys are re-read in the background,
so chat keeps its latency, /healthz keeps answering, the keys last read keep working, the outage is
logged and shown by /readyz within seconds, key administration answers 503 instead of hanging, and
every answer's spend record reaches the ledger once the database is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from gateway.bench.ledger import scratch_postgres
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.identity.keys import KeyStore
from gateway.identity.keys_postgres import PostgresKeys
from tests.blackhole_proxy import BlackholeProxy
from tests.conftest import openai_deployment
from tests.gateway_process import GatewayProcess, start_gateway, write_spec
from tests.load_sampling import REQUEST_TIMEOUT, Samples, first_degraded, keep_asking, p99, watch_readiness

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN_KEY = "sk-hung-db-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CLIENTS = 4
HEALTHY_SECONDS = 5.0
# How long the database hangs (an operator's outage is longer; 10 s keeps the suite quick).
HANG_SECONDS = 10.0
# Latency noise a busy 2-core test machine adds on top of the healthy p99.
SLACK_SECONDS = 0.05
WARNING_WITHIN_SECONDS = 6.0
READYZ_WITHIN_SECONDS = 5.0
UNAVAILABLE = "key store unavailable"
BACK = "key store is back"


@pytest.fixture
def proxied_database() -> Iterator[tuple[str, BlackholeProxy]]:
    """A scratch database in the shared PostgreSQL, and a black-hole proxy in front of it: (the URL
    through the proxy, the proxy)."""
    with scratch_postgres(POSTGRES) as direct, BlackholeProxy("127.0.0.1", 5432) as proxy:
        yield urlsplit(direct)._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl(), proxy


@pytest.fixture
def gateway_on_proxy(
    proxied_database: tuple[str, BlackholeProxy],
    upstreams: Callable[..., FakeOpenAIUpstream],
    tmp_path: Path,
) -> Iterator[tuple[GatewayProcess, str]]:
    url, _ = proxied_database
    store = KeyStore(PostgresKeys(url))
    _, secret = store.create("search", "client", "load")
    store.close()
    spec = {
        "deployments": {"big": openai_deployment(upstreams())},
        "routes": {"r": ["big"]},
        "default_route": "r",
    }
    gateway = start_gateway(
        {
            **write_spec(spec, tmp_path / "policy"),
            "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
            "GATEWAY_DATABASE_URL": url,
            "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        },
        tmp_path / "gateway.log",
    )
    try:
        yield gateway, secret
    finally:
        gateway.stop()


def first_line_after(log: Path, text: str, offset: int) -> bool:
    return text in log.read_text(errors="replace")[offset:]


def test_a_hung_key_database_stops_nothing(
    gateway_on_proxy: tuple[GatewayProcess, str], proxied_database: tuple[str, BlackholeProxy]
) -> None:
    gateway, secret = gateway_on_proxy
    _, proxy = proxied_database
    chat_body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    chats, probes, stop = Samples(), Samples(), threading.Event()
    workers = [
        threading.Thread(
            target=keep_asking, args=(f"{gateway.base_url}/chat/completions", chat_body, secret, chats, stop)
        )
        for _ in range(CLIENTS)
    ]
    workers.append(
        threading.Thread(target=keep_asking, args=(f"{gateway.url}/healthz", None, None, probes, stop))
    )
    readiness: list[tuple[float, int, dict[str, Any]]] = []
    workers.append(threading.Thread(target=watch_readiness, args=(f"{gateway.url}/readyz", readiness, stop)))
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)  # warm-up, not measured
        healthy_from = time.monotonic()
        time.sleep(HEALTHY_SECONDS)
        log_offset = len(gateway.log.read_text(errors="replace"))
        hung_from = time.monotonic()
        proxy.hang()
        warned_after = None
        admin_status, admin_seconds = 0, 0.0
        while time.monotonic() < hung_from + HANG_SECONDS:
            if warned_after is None and first_line_after(gateway.log, UNAVAILABLE, log_offset):
                warned_after = time.monotonic() - hung_from
            if warned_after is not None and not admin_status:
                # Key administration needs the database: it answers 503 in seconds, and hangs nothing else.
                asked = time.monotonic()
                made = httpx.post(
                    f"{gateway.url}/admin/keys", json={"team": "late"}, headers=ADMIN, timeout=30
                )
                admin_status, admin_seconds = made.status_code, time.monotonic() - asked
            time.sleep(0.1)
        hung_until = time.monotonic()
        proxy.resume()
        back_by = time.monotonic() + 10
        while not first_line_after(gateway.log, BACK, log_offset) and time.monotonic() < back_by:
            time.sleep(0.1)
        recovered_by = time.monotonic() + 10
        while time.monotonic() < recovered_by and not (
            readiness and readiness[-1][2].get("status") == "ready"
        ):
            time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=REQUEST_TIMEOUT + 5)

    healthy, hung = chats.between(healthy_from, hung_from), chats.between(hung_from, hung_until)
    assert healthy and hung
    # The keys last read kept working: every request was answered, none stuck.
    assert {status for _, _, status in healthy + hung} == {200}, sorted({s for _, _, s in hung})
    assert p99(hung) <= 2 * p99(healthy) + SLACK_SECONDS, (p99(healthy), p99(hung), len(hung))
    probed = probes.between(hung_from, hung_until)
    assert probed and all(status == 200 and took < 1.0 for _, took, status in probed), max(
        took for _, took, _ in probed
    )
    assert warned_after is not None and warned_after <= WARNING_WITHIN_SECONDS, warned_after
    assert admin_status == 503 and admin_seconds < WARNING_WITHIN_SECONDS, (admin_status, admin_seconds)
    # And once the database answers again, the gateway says so and key administration works again.
    assert first_line_after(gateway.log, BACK, log_offset)
    made = httpx.post(f"{gateway.url}/admin/keys", json={"team": "after"}, headers=ADMIN, timeout=10)
    assert made.status_code == 200
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=chat_body,
        headers={"authorization": f"Bearer {made.json()['key']}"},
        timeout=10,
    )
    assert answer.status_code == 200
    # /readyz said so within seconds, kept answering 200 (chat was served), and is ready again.
    degraded_after = first_degraded(readiness, hung_from)
    assert degraded_after is not None and degraded_after <= READYZ_WITHIN_SECONDS, degraded_after
    during = [body for at, _, body in readiness if hung_from + READYZ_WITHIN_SECONDS <= at < hung_until]
    assert during and all(
        not body["services"]["ledger"]["ok"] or not body["services"]["keys"]["ok"] for body in during
    )
    assert {status for at, status, _ in readiness if hung_from <= at < hung_until} == {200}
    assert readiness[-1][2]["status"] == "ready", readiness[-1]
    # Every answer's spend record reached the ledger once the database was back.
    answered = sum(1 for _, _, status in chats.rows if status == 200) + 1
    gateway.stop()
    with psycopg.connect(proxied_database[0]) as conn:
        recorded = conn.execute("SELECT COUNT(*) FROM ledger WHERE status = 200").fetchone()
    assert recorded is not None and recorded[0] == answered
