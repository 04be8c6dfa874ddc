"""OTLP/HTTP export to a real collector on loopback: a small HTTP server that decodes what it receives."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gateway.telemetry import names
from gateway.telemetry.telemetry import RejectionKind, Telemetry
from tests.otlp_collector import Collector, running_collector
from tests.telemetry.conftest import make_record


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as received:
        yield received


def test_spans_and_metrics_reach_the_collector(collector: Collector) -> None:
    telemetry = Telemetry(
        service_name="gateway-otlp-test", otlp_endpoint=collector.url + "/", metric_export_interval_s=0.2
    )
    try:
        request = telemetry.start_request("req-1", "auto", stream=False)
        with request.child(names.SPAN_POLICY):
            pass
        with request.child(names.SPAN_CACHE):
            pass
        request.start_child(names.SPAN_UPSTREAM).end()
        record = make_record()
        request.finish(record)
        telemetry.observe(record)
        telemetry.observe(make_record(cost_usd=2.0, reference_usd=1.0))
        telemetry.observe(make_record(energy_wh=0.2, reference_energy_wh=0.1, admission="shed: over"))
        telemetry.count_cache_lookup("miss", "cheap")
        telemetry.count_cache_audit("agree", "cheap")
        kinds: tuple[RejectionKind, ...] = ("policy", "budget", "rate_limit")
        for kind in kinds:
            telemetry.count_rejection(kind, "some-rule", "search")
    finally:
        telemetry.shutdown()  # flushes the batch of spans and makes a last metric export

    assert collector.span_names() == {
        names.SPAN_REQUEST,
        names.SPAN_POLICY,
        names.SPAN_CACHE,
        names.SPAN_UPSTREAM,
    }
    assert collector.metric_names() == set(names.PROMETHEUS_NAMES)
    assert collector.service_names() == {"gateway-otlp-test"}


def test_metrics_are_exported_periodically(collector: Collector) -> None:
    telemetry = Telemetry(otlp_endpoint=collector.url, metric_export_interval_s=0.05)
    try:
        telemetry.observe(make_record())
        deadline = time.monotonic() + 5
        while names.METRIC_REQUESTS not in collector.metric_names() and time.monotonic() < deadline:
            time.sleep(0.02)
        exported_before_shutdown = collector.metric_names()
    finally:
        telemetry.shutdown()
    assert names.METRIC_REQUESTS in exported_before_shutdown
