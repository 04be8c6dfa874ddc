"""/metrics of a running gateway after real traffic through a capacity-limited route with a latency
objective: energy used and saved against the reference route, queue time by priority class, and admission
control's decisions, each equal to what the ledger recorded for the same requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, ledger_rows, openai_deployment
from tests.telemetry.conftest import Samples

FRONTIER_ENERGY = {"wh_per_1k_input_tokens": 0.5, "wh_per_1k_output_tokens": 2.0}
LOCAL_ENERGY = {"wh_per_1k_input_tokens": 0.01, "wh_per_1k_output_tokens": 0.02}


def spec(frontier: FakeOpenAIUpstream, local: FakeOpenAIUpstream) -> dict[str, Any]:
    """One place at a time on the frontier (the reference route), whose first byte is due in 0.2 s:
    standard requests over it go to the local route, interactive ones queue."""
    admission = {"first_byte_seconds": 0.2, "standard": {"downgrade": "local"}}
    return {
        "deployments": {
            "big": openai_deployment(
                frontier, capacity={"max_concurrency": 1, "queue": 8}, energy=FRONTIER_ENERGY
            ),
            "small": openai_deployment(local, energy=LOCAL_ENERGY),
        },
        "routes": {"frontier": {"deployments": ["big"], "admission": admission}, "local": ["small"]},
        "default_route": "frontier",
        "reference_route": "frontier",
    }


def ask_all(url: str, asks: list[tuple[str, str]], gap: float = 0.03) -> list[httpx.Response]:
    """Chat requests with these texts and priority classes, sent `gap` apart and all in flight at once."""

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = []
            for text, priority in asks:
                body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
                post = client.post(
                    f"{url}/chat/completions", json=body, headers={"x-gateway-priority": priority}
                )
                tasks.append(asyncio.create_task(post))
                await asyncio.sleep(gap)
            return list(await asyncio.gather(*tasks))

    return asyncio.run(main())


def scrape(gw: RunningGateway) -> Samples:
    response = httpx.get(f"{gw.url}/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset((key, label) for key, label in sample.labels.items() if label)): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def by_labels(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: found for (metric, labels), found in samples.items() if metric == name}


def test_energy_queue_time_and_admission_decisions_on_metrics_equal_the_ledgers(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    frontier, local = upstreams(Behaviour(latency=0.3)), upstreams()
    gw = gateway(spec(frontier, local))
    # The first request teaches the gateway the frontier's first-byte time (0.3 s, over its objective).
    [warm] = ask_all(gw.base_url, [("warm", "interactive")])
    assert warm.status_code == 200
    answers = ask_all(gw.base_url, [("one", "interactive"), ("two", "interactive"), ("report", "standard")])
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert answers[2].headers["x-gateway-admission"].startswith("downgraded: ")
    samples = scrape(gw)
    rows = ledger_rows(gw, bg)
    assert len(rows) == 4

    energy = by_labels(samples, "gateway_energy_Wh_total")
    assert sum(energy.values()) == pytest.approx(sum(row["energy_wh"] for row in rows), rel=1e-9)
    report = next(row for row in rows if row["route"] == "local")
    local_labels = frozenset({"route": "local", "deployment": "small"}.items())  # an open gateway: no team
    assert energy[local_labels] == pytest.approx(report["energy_wh"], rel=1e-9)
    # Sent to the local route, the report used far less than the frontier would have.
    assert report["saved_energy_wh"] > 0
    saved = sum(by_labels(samples, "gateway_energy_savings_Wh_total").values()) - sum(
        by_labels(samples, "gateway_energy_overspend_Wh_total").values()
    )
    assert saved == pytest.approx(sum(row["saved_energy_wh"] for row in rows), rel=1e-9, abs=1e-12)

    queued = frozenset({"route": "frontier", "deployment": "big", "priority": "interactive"}.items())
    frontier_rows = [row for row in rows if row["deployment"] == "big"]
    assert by_labels(samples, "gateway_queue_duration_seconds_count")[queued] == len(frontier_rows) == 3
    assert by_labels(samples, "gateway_queue_duration_seconds_sum")[queued] == pytest.approx(
        sum(row["queue_ms"] for row in frontier_rows) / 1000, rel=1e-9
    )
    assert max(row["queue_ms"] for row in frontier_rows) > 200  # "two" waited behind "one"

    decisions = by_labels(samples, "gateway_admission_decisions_total")
    expected = Counter(
        frozenset(
            {
                "route": row["route"],
                "priority": row["priority"],
                "action": row["admission"].split(":")[0],
            }.items()
        )
        for row in rows
        if row["admission"] is not None
    )
    assert decisions == dict(expected)
    assert (
        expected[frozenset({"route": "local", "priority": "standard", "action": "downgraded"}.items())] == 1
    )
