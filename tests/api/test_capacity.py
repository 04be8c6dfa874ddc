"""Capacity through a running gateway: a deployment's limit and priority queue, admission control's
downgrade and shed with their headers, and what the ledger keeps (priority, queue time, admission,
energy)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

SLOW = Behaviour(latency=0.3)
ENERGY = {"wh_per_1k_input_tokens": 0.5, "wh_per_1k_output_tokens": 2.0}


def spec(frontier: FakeOpenAIUpstream, local: FakeOpenAIUpstream, **policy: Any) -> dict[str, Any]:
    return {
        "deployments": {
            "big": openai_deployment(
                frontier,
                capacity={"max_concurrency": 1, "queue": 8},
                energy=ENERGY,
                price={"input_per_mtok": 10, "output_per_mtok": 30},
            ),
            "small": openai_deployment(
                local,
                capacity={"max_concurrency": 1, "queue": 8},
                price={"input_per_mtok": 0, "output_per_mtok": 0},
                energy={"wh_per_1k_input_tokens": 0.01, "wh_per_1k_output_tokens": 0.02},
            ),
        },
        "routes": {"frontier": ["big"], "local": ["small"]},
        "default_route": "frontier",
        "reference_route": "frontier",
        **policy,
    }


async def post(client: httpx.AsyncClient, url: str, text: str, priority: str | None) -> httpx.Response:
    headers = {"x-gateway-priority": priority} if priority else {}
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    return await client.post(f"{url}/chat/completions", json=body, headers=headers, timeout=30)


def burst(url: str, asks: list[tuple[str, str | None]], gap: float = 0.02) -> list[httpx.Response]:
    """Requests sent one after another `gap` apart (so they queue in that order), all at once in flight."""

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            tasks = []
            for text, priority in asks:
                tasks.append(asyncio.create_task(post(client, url, text, priority)))
                await asyncio.sleep(gap)
            return list(await asyncio.gather(*tasks))

    return asyncio.run(main())


def test_a_busy_deployment_serves_its_queue_by_priority(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    frontier, local = upstreams(SLOW), upstreams()
    gw = gateway(spec(frontier, local))
    asks = [("first", None), ("bulk", "deferrable"), ("report", "standard"), ("chat", "interactive")]
    answers = burst(gw.base_url, asks)
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200]
    # One at a time upstream; after the first, the interactive one went first and the bulk one last.
    seen = [request.body["messages"][-1]["content"] for request in frontier.requests]
    assert seen == ["first", "chat", "report", "bulk"]
    by_text = dict(zip([text for text, _ in asks], answers, strict=True))
    assert by_text["bulk"].headers["x-gateway-priority"] == "deferrable"
    assert float(by_text["bulk"].headers["x-gateway-queue-ms"]) > 600  # behind three 0.3 s answers
    assert "x-gateway-queue-ms" not in by_text["first"].headers
    assert float(by_text["chat"].headers["x-gateway-energy-wh"]) == pytest.approx(
        (10 * 0.5 + 5 * 2.0) / 1000, rel=0.5
    )
    rows = {row["request_id"]: row for row in ledger_rows(gw, bg)}
    bulk = rows[by_text["bulk"].headers["x-request-id"]]
    assert bulk["priority"] == "deferrable" and bulk["queue_ms"] > 600
    assert bulk["energy_wh"] > 0 and bulk["reference_energy_wh"] == pytest.approx(bulk["energy_wh"])


def test_over_its_objective_a_standard_request_is_downgraded_and_a_deferrable_one_shed(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    frontier, local = upstreams(SLOW), upstreams()
    admission = {"first_byte_seconds": 0.5, "standard": {"downgrade": "local"}, "deferrable": "shed"}
    config = spec(frontier, local)
    config["routes"]["frontier"] = {"deployments": ["big"], "admission": admission}
    gw = gateway(config)
    warm = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "warm"}]}, timeout=10)  # fmt: skip
    assert warm.status_code == 200 and "x-gateway-admission" not in warm.headers  # the service time known
    asks = [("one", None), ("two", None), ("three", None), ("std", "standard"), ("bulk", "deferrable"),
            ("four", "interactive")]  # fmt: skip
    answers = dict(zip([text for text, _ in asks], burst(gw.base_url, asks, gap=0.03), strict=True))
    std, bulk, four = answers["std"], answers["bulk"], answers["four"]
    assert std.status_code == 200 and std.headers["x-gateway-route"] == "local"
    assert std.headers["x-gateway-admission"].startswith("downgraded: frontier first byte in")
    assert "sent to local" in std.headers["x-gateway-admission"]
    assert std.headers["x-gateway-rule"] == "default (downgraded)"
    assert bulk.status_code == 429 and bulk.json()["error"]["code"] == "load_shed"
    assert int(bulk.headers["retry-after"]) >= 1
    assert "objective" in bulk.json()["error"]["message"]
    # Interactive requests are never shed: they queue, and say so.
    assert four.status_code == 200 and four.headers["x-gateway-admission"].startswith("queued: ")
    rows = {row["request_id"]: row for row in ledger_rows(gw, bg)}
    assert rows[std.headers["x-request-id"]]["admission"].startswith("downgraded: ")
    shed = rows[bulk.headers["x-request-id"]]
    assert shed["status"] == 429 and shed["error"] == "load_shed" and shed["cost_usd"] == 0
    assert [r.body["messages"][-1]["content"] for r in local.requests] == ["std"]


def test_a_full_queue_answers_503_with_retry_after_and_a_bad_priority_400(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    frontier, local = upstreams(SLOW), upstreams()
    config = spec(frontier, local)
    config["deployments"]["big"]["capacity"] = {"max_concurrency": 1, "queue": 1}
    gw = gateway(config)
    answers = burst(gw.base_url, [("a", None), ("b", None), ("c", None)])
    assert [answer.status_code for answer in answers] == [200, 200, 503]
    refused = answers[2]
    assert refused.json()["error"]["code"] == "capacity_exceeded" and int(refused.headers["retry-after"]) >= 1
    bad = httpx.post(
        f"{gw.base_url}/chat/completions", headers={"x-gateway-priority": "urgent"},
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-gateway-priority"


def test_a_team_default_class_holds_unless_the_client_asks_lower(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    frontier, local = upstreams(), upstreams()
    config = spec(frontier, local, priorities={"default": "standard"})
    gw = gateway(config)

    def priority_of(headers: dict[str, str], **body: Any) -> str:
        request = {"model": "auto", "messages": [{"role": "user", "content": "x"}], **body}
        answer = httpx.post(f"{gw.base_url}/chat/completions", json=request, headers=headers)
        assert answer.status_code == 200
        return answer.headers["x-gateway-priority"]

    assert priority_of({}) == "standard"
    assert priority_of({"x-gateway-priority": "interactive"}) == "standard"  # not raised by a header
    assert priority_of({"x-gateway-priority": "deferrable"}) == "deferrable"
    assert priority_of({}, service_tier="flex") == "deferrable"


def test_explain_says_the_class_and_how_admission_control_sees_the_route_now(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    frontier, local = upstreams(SLOW), upstreams()
    config = spec(frontier, local)
    admission = {"first_byte_seconds": 0.2, "standard": {"downgrade": "local"}}
    config["routes"]["frontier"] = {"deployments": ["big"], "admission": admission}
    gw = gateway(config)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=10).status_code == 200

    def explain() -> dict[str, Any]:
        answer = httpx.post(
            f"{gw.base_url}/route/explain", json=body, headers={"x-gateway-priority": "standard"}
        )
        assert answer.status_code == 200
        return answer.json()  # type: ignore[no-any-return]

    idle = explain()
    assert idle["priority"] == "standard"
    assert idle["admission"]["deployment"] == "big" and idle["admission"]["limit"] == 1
    assert idle["admission"]["objective_seconds"] == 0.2
    # Idle, but its first byte takes 0.3 s: over the objective, so a standard request would go local.
    assert idle["admission"]["action"] == "downgraded"
    assert idle["admission"]["predicted_first_byte_seconds"] == pytest.approx(0.3, abs=0.1)
