"""Three gateway processes on one machine sharing one Redis and one PostgreSQL, as replicas behind a load
balancer would: a key made through one works on all, an answer cached through one is a hit on the others,
a rate limit holds across all three, a policy applied on one is live on all within 2 s, and every
replica's spend lands in the one ledger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.bench.ledger import scratch_postgres
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.identity.keys import digest_of
from tests.conftest import openai_deployment
from tests.gateway_process import GatewayProcess, start_gateway, write_spec

ADMIN_KEY = "sk-replicas-admin"
# A key given in the environment, as every replica of a deployment gets it.
LIMITED_KEY = "sk-replicas-limited"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REPLICAS = 3
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PROPAGATION_SECONDS = 2.0


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream), "small": openai_deployment(upstream)},
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"tokens": {"kind": "size", "of": "prompt_tokens"}},
        "rules": [
            {
                "name": "cached-local",
                "when": {"signal": "tokens", "gte": 0},
                "route": "local",
                "cache": {"enabled": True, "ttl_seconds": 600},
            }
        ],
        "default_route": "frontier",
        "rate_limits": {"keys": {f"env-{digest_of(LIMITED_KEY)[:8]}": {"requests_per_minute": 6}}},
    }


@pytest.fixture
def replicas(
    upstreams: Callable[..., FakeOpenAIUpstream], redis_url: str, tmp_path: Path
) -> Iterator[list[GatewayProcess]]:
    upstream = upstreams(Behaviour(content="a shared answer"))
    with scratch_postgres(POSTGRES) as database:
        settings = {
            **write_spec(spec(upstream), tmp_path / "policy"),
            "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
            "GATEWAY_API_KEYS": LIMITED_KEY,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_PREFIX": f"test:{uuid.uuid4().hex}:",
            "GATEWAY_DATABASE_URL": database,
            # Every replica reads the same policy file (a ConfigMap in Kubernetes) and notices a change.
            "GATEWAY_POLICY_RELOAD_INTERVAL": "0.5",
        }
        started = [
            start_gateway(
                {**settings, "GATEWAY_STATE_DIR": str(tmp_path / f"state-{n}")}, tmp_path / f"gw-{n}.log"
            )
            for n in range(REPLICAS)
        ]
        try:
            yield started
        finally:
            for replica in started:
                replica.stop()


def ask(replica: GatewayProcess, key: str, question: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": question}], "temperature": 0}
    return httpx.post(
        f"{replica.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_keys_cached_answers_rate_limits_and_the_ledger_are_shared(replicas: list[GatewayProcess]) -> None:
    # A key made through one replica is known to all: keys live in the shared PostgreSQL.
    made = httpx.post(f"{replicas[0].url}/admin/keys", json={"team": "search"}, headers=ADMIN)
    key = str(made.json()["key"])
    time.sleep(2.2)  # each replica re-reads the keys every 2 s
    first = ask(replicas[0], key, "What is the capital of France?")
    assert first.status_code == 200 and first.headers["x-gateway-cache"] == "miss"
    for replica in replicas[1:]:
        again = ask(replica, key, "What is the capital of France?")
        assert again.headers["x-gateway-cache"] == "exact", replica.url

    limited = LIMITED_KEY
    statuses = [ask(replicas[n % REPLICAS], limited, f"question {n}").status_code for n in range(9)]
    assert statuses.count(200) == 6 and statuses[6:] == [429, 429, 429]

    # Every replica's records reach the one ledger when it drains (every 0.5 s), whichever replica is asked.
    total: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while total.get("requests", 0) < REPLICAS + 9 and time.monotonic() < deadline:
        time.sleep(0.5)
        spend = httpx.get(f"{replicas[2].url}/spend", params={"group_by": ""}, headers=ADMIN)
        [total] = spend.json()["rows"]
    assert total["requests"] == REPLICAS + 9
    assert total["cached_answers"] == REPLICAS - 1 and total["errors"] == 3


def test_a_policy_applied_on_one_replica_is_live_on_all_within_two_seconds(
    replicas: list[GatewayProcess],
) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    name = httpx.get(f"{replicas[0].url}/admin/policies", headers=admin).json()["live"]["name"]
    sample = {"messages": [{"role": "user", "content": "hello"}]}

    def route_on(replica: GatewayProcess) -> str:
        explained = httpx.post(f"{replica.url}/v1/route/explain", json=sample, headers=admin)
        return str(explained.json()["route"])

    assert [route_on(replica) for replica in replicas] == ["local"] * REPLICAS
    current = yaml.safe_load(Path(replicas[0].log.parent / "policy" / "policy.yaml").read_text())
    current["rules"] = []  # everything to the default route, the frontier
    applied = httpx.put(
        f"{replicas[0].url}/admin/policies/{name}", content=yaml.safe_dump(current), headers=admin
    )
    assert applied.status_code == 200, applied.text
    changed_at = time.monotonic()
    pending = set(range(REPLICAS))
    while pending and time.monotonic() - changed_at < PROPAGATION_SECONDS:
        pending = {n for n in pending if route_on(replicas[n]) != "frontier"}
        time.sleep(0.05)
    assert pending == set(), (
        f"replicas {sorted(pending)} still on the old policy after {PROPAGATION_SECONDS} s"
    )
