"""Metrics from spend records: counts per label set, what each kind of request adds, and isolation."""

from __future__ import annotations

import asyncio

import prometheus_client
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.telemetry.record import FinishedRequest
from gateway.telemetry.spans import RequestSpan
from gateway.telemetry.telemetry import Telemetry
from tests.telemetry.conftest import make_record, scrape, value


def test_a_spend_record_is_what_telemetry_reads() -> None:
    assert isinstance(make_record(), FinishedRequest)


def test_counters_add_up_per_label_set(telemetry: Telemetry) -> None:
    for _ in range(2):
        telemetry.observe(make_record(team="search", route="cheap", deployment="mini"))
    telemetry.observe(
        make_record(
            team="ads", route="frontier", deployment="big", prompt_tokens=1000, completion_tokens=300,
            cached_tokens=0, reasoning_tokens=0, cost_usd=3.0, reference_usd=3.0,
        )
    )  # fmt: skip
    telemetry.observe(
        make_record(team="ads", route="frontier", deployment="big", status=502, error="upstream_error")
    )
    samples = scrape(telemetry)

    search = {"route": "cheap", "team": "search", "deployment": "mini"}
    ads = {"route": "frontier", "team": "ads", "deployment": "big"}
    assert value(samples, "gateway_requests_total", **search, status="200", cache="miss") == 2
    assert value(samples, "gateway_requests_total", **ads, status="200", cache="miss") == 1
    assert value(samples, "gateway_requests_total", **ads, status="502", cache="miss") == 1
    assert value(samples, "gateway_tokens_total", **search, type="input") == 200
    assert value(samples, "gateway_tokens_total", **search, type="output") == 40
    assert value(samples, "gateway_tokens_total", **search, type="cached") == 80
    assert value(samples, "gateway_tokens_total", **search, type="reasoning") == 10
    assert value(samples, "gateway_tokens_total", **ads, type="input") == 1100
    assert value(samples, "gateway_cost_USD_total", **search) == 0.5
    assert value(samples, "gateway_cost_USD_total", **ads) == 3.25
    assert value(samples, "gateway_savings_USD_total", **search) == 1.5
    assert value(samples, "gateway_savings_USD_total", **ads) == 0.75
    # Latency follows route and deployment, not the team, so its histograms do not carry one.
    latency = {"route": "cheap", "deployment": "mini", "status": "200", "cache": "miss"}
    assert value(samples, "gateway_request_duration_seconds_count", **latency) == 2
    assert value(samples, "gateway_request_duration_seconds_sum", **latency) == pytest.approx(0.6)
    assert value(samples, "gateway_request_duration_seconds_bucket", **latency, le="0.25") == 0
    assert value(samples, "gateway_request_duration_seconds_bucket", **latency, le="0.5") == 2
    assert value(samples, "gateway_request_time_to_first_byte_seconds_sum", **latency) == pytest.approx(0.24)
    assert value(samples, "gateway_request_overhead_seconds_sum", **latency) == pytest.approx(0.001)
    # No label carries a request or key id.
    assert not any(
        "req-1" in dict(labels).values() or "key-1" in dict(labels).values() for _, labels in samples
    )


def test_a_request_dearer_than_its_reference_adds_to_overspend_not_savings(telemetry: Telemetry) -> None:
    telemetry.observe(make_record(cost_usd=1.5, reference_usd=1.0))
    telemetry.observe(make_record(cost_usd=None))  # an unknown price adds nothing, not $0
    samples = scrape(telemetry)

    spend = {"route": "cheap", "team": "search", "deployment": "mini"}
    assert value(samples, "gateway_overspend_USD_total", **spend) == 0.5
    assert value(samples, "gateway_savings_USD_total", **spend) == 0
    assert value(samples, "gateway_cost_USD_total", **spend) == 1.5
    assert value(samples, "gateway_requests_total", **spend, status="200", cache="miss") == 2


def test_gen_ai_metrics_count_upstream_calls_only(telemetry: Telemetry) -> None:
    telemetry.observe(make_record())
    telemetry.observe(make_record(cache="exact", deployment=None, model=None, upstream_ms=None, cost_usd=0.0))
    telemetry.observe(make_record(status=504, error="upstream_timeout", prompt_tokens=0, completion_tokens=0))
    samples = scrape(telemetry)

    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "gpt-4o-mini"}
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **chat) == 1
    failed = {**chat, "error_type": "upstream_timeout"}
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **failed) == 1
    assert value(samples, "gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="input") == 100
    assert value(samples, "gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="output") == 20
    assert value(samples, "gen_ai_client_token_usage_count", **chat, gen_ai_token_type="input") == 1
    # The cache hit is a gateway request like any other, with no deployment label.
    hit = {"route": "cheap", "team": "search", "status": "200", "cache": "exact"}
    assert value(samples, "gateway_requests_total", **hit) == 1


def test_gen_ai_metrics_name_the_operation_of_the_inbound_api(telemetry: Telemetry) -> None:
    telemetry.observe(make_record(api="embeddings", completion_tokens=0))
    telemetry.observe(make_record(api="messages"))
    samples = scrape(telemetry)
    embeddings = {"gen_ai_operation_name": "embeddings", "gen_ai_request_model": "gpt-4o-mini"}
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **embeddings) == 1
    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "gpt-4o-mini"}
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **chat) == 1


def test_cache_lookups_and_rejections_are_counted_by_name(telemetry: Telemetry) -> None:
    telemetry.count_cache_lookup("miss", "cheap")
    telemetry.count_cache_lookup("semantic", "cheap")
    telemetry.count_cache_lookup("semantic", "cheap")
    telemetry.count_rejection("policy", "no-secrets", "search")
    telemetry.count_rejection("policy", "no-secrets", None)
    telemetry.count_rejection("budget", "search-monthly", "search")
    telemetry.count_rejection("rate_limit", "search-rpm", "search")
    samples = scrape(telemetry)

    assert value(samples, "gateway_cache_lookups_total", outcome="miss", route="cheap") == 1
    assert value(samples, "gateway_cache_lookups_total", outcome="semantic", route="cheap") == 2
    assert value(samples, "gateway_policy_rejections_total", policy="no-secrets", team="search") == 1
    assert value(samples, "gateway_policy_rejections_total", policy="no-secrets") == 1
    assert value(samples, "gateway_budget_rejections_total", budget="search-monthly", team="search") == 1
    assert value(samples, "gateway_rate_limit_rejections_total", limit="search-rpm", team="search") == 1


def test_two_telemetries_share_no_metrics(telemetry: Telemetry) -> None:
    other = Telemetry(service_name="other-gateway")
    try:
        telemetry.observe(make_record())
        other.observe(make_record(team="ads"))
        other.observe(make_record(team="ads"))
        mine, theirs = scrape(telemetry), scrape(other)
    finally:
        other.shutdown()

    labels = {"route": "cheap", "deployment": "mini", "status": "200", "cache": "miss"}
    assert value(mine, "gateway_requests_total", **labels, team="search") == 1
    assert value(mine, "gateway_requests_total", **labels, team="ads") is None
    assert value(theirs, "gateway_requests_total", **labels, team="ads") == 2
    assert value(theirs, "gateway_requests_total", **labels, team="search") is None
    assert [dict(found)["service_name"] for name, found in theirs if name == "target_info"] == [
        "other-gateway"
    ]
    # Nothing went to prometheus_client's process-wide registry.
    assert b"gateway_requests_total" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_extra_metric_readers_see_the_same_metrics() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(metric_readers=[reader])
    try:
        telemetry.observe(make_record())
        data = reader.get_metrics_data()
    finally:
        telemetry.shutdown()
    assert data is not None
    exported = {
        metric.name for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
    }
    assert {"gateway.requests", "gateway.request.duration", "gen_ai.client.token.usage"} <= exported


def test_without_an_exporter_tracing_is_a_shared_no_op(telemetry: Telemetry) -> None:
    span = telemetry.start_request("req-1", "auto", stream=True)
    assert type(span) is RequestSpan
    assert telemetry.start_request("req-2", "auto", stream=False) is span
    with span.child("gateway.policy.decide") as step:
        step.set("gateway.rule", "short-prompts")
    span.start_child("gateway.upstream").end(error="upstream_timeout")
    span.finish(make_record())


def test_shutdown_unregisters_metrics_and_can_be_repeated() -> None:
    telemetry = Telemetry()
    telemetry.observe(make_record())
    telemetry.shutdown()
    telemetry.shutdown()
    asyncio.run(telemetry.aclose())
    assert telemetry.prometheus_text()[0] == b""


def test_energy_is_counted_with_what_the_reference_route_would_have_used(telemetry: Telemetry) -> None:
    telemetry.observe(make_record(energy_wh=0.25, reference_energy_wh=1.0))
    telemetry.observe(make_record(energy_wh=0.5, reference_energy_wh=0.25))  # more than the reference
    telemetry.observe(make_record(energy_wh=0.125, reference_energy_wh=None))  # no reference route
    telemetry.observe(make_record(energy_wh=None, reference_energy_wh=1.0))  # unknown: adds nothing
    telemetry.observe(
        make_record(team="ads", cache="exact", deployment=None, energy_wh=0.0, reference_energy_wh=2.0)
    )
    samples = scrape(telemetry)

    search = {"route": "cheap", "team": "search", "deployment": "mini"}
    assert value(samples, "gateway_energy_Wh_total", **search) == 0.875
    assert value(samples, "gateway_energy_savings_Wh_total", **search) == 0.75
    assert value(samples, "gateway_energy_overspend_Wh_total", **search) == 0.25
    # A cache hit used no model: all its reference's energy is saved.
    hit = {"route": "cheap", "team": "ads"}
    assert value(samples, "gateway_energy_Wh_total", **hit) == 0
    assert value(samples, "gateway_energy_savings_Wh_total", **hit) == 2.0


def test_queue_time_is_a_histogram_by_route_deployment_and_priority(telemetry: Telemetry) -> None:
    telemetry.observe(make_record(priority="interactive", queue_ms=0.0))
    telemetry.observe(make_record(priority="deferrable", queue_ms=1500.0))
    telemetry.observe(make_record(priority="deferrable", queue_ms=40.0))
    # Refused before any deployment: it waited for none, so it is not a queue time of 0.
    telemetry.observe(make_record(priority="standard", deployment=None, status=429, error="load_shed"))
    samples = scrape(telemetry)

    interactive = {"route": "cheap", "deployment": "mini", "priority": "interactive"}
    assert value(samples, "gateway_queue_duration_seconds_count", **interactive) == 1
    assert value(samples, "gateway_queue_duration_seconds_bucket", **interactive, le="0.0") == 1
    deferrable = {"route": "cheap", "deployment": "mini", "priority": "deferrable"}
    assert value(samples, "gateway_queue_duration_seconds_count", **deferrable) == 2
    assert value(samples, "gateway_queue_duration_seconds_sum", **deferrable) == pytest.approx(1.54)
    assert value(samples, "gateway_queue_duration_seconds_bucket", **deferrable, le="0.05") == 1
    assert value(samples, "gateway_queue_duration_seconds_bucket", **deferrable, le="1.0") == 1
    assert value(samples, "gateway_queue_duration_seconds_bucket", **deferrable, le="2.5") == 2
    assert not any(
        name.startswith("gateway_queue_duration") and ("priority", "standard") in labels
        for name, labels in samples
    )
    # The priority class is on no other metric: the request counters keep their label sets.
    answered = {"route": "cheap", "team": "search", "deployment": "mini", "status": "200", "cache": "miss"}
    assert value(samples, "gateway_requests_total", **answered) == 3


def test_admission_decisions_are_counted_by_route_priority_and_action(telemetry: Telemetry) -> None:
    downgraded = "downgraded: frontier first byte in 4.2 s over its 1.5 s objective; sent to cheap"
    telemetry.observe(make_record(priority="standard", admission=downgraded))
    telemetry.observe(make_record(priority="standard", admission="downgraded: frontier queue 2.0 s: long"))
    telemetry.observe(make_record(priority="interactive", admission="queued: frontier first byte in 2 s"))
    shed = make_record(route="frontier", priority="deferrable", admission="shed: frontier", deployment=None)
    telemetry.observe(shed)
    telemetry.observe(make_record(priority="deferrable", admission="deferred: waits for spare capacity"))
    telemetry.observe(make_record(priority="standard"))  # within its objective: no decision
    samples = scrape(telemetry)

    decisions = {
        frozenset(labels): count
        for (name, labels), count in samples.items()
        if name == "gateway_admission_decisions_total"
    }
    assert decisions == {
        frozenset({"route": "cheap", "priority": "standard", "action": "downgraded"}.items()): 2,
        frozenset({"route": "cheap", "priority": "interactive", "action": "queued"}.items()): 1,
        frozenset({"route": "frontier", "priority": "deferrable", "action": "shed"}.items()): 1,
        frozenset({"route": "cheap", "priority": "deferrable", "action": "deferred"}.items()): 1,
    }
