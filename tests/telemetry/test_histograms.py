"""Histograms aggregated in-process: /metrics exactly as the OpenTelemetry exporter wrote the SDK's, bucket
rules as in the SDK, each histogram shown once when OTLP or extra readers also get it."""

from __future__ import annotations

import asyncio
import math
import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from gateway.telemetry import histograms, names
from gateway.telemetry.histograms import MAX_SERIES, Histogram, HistogramCollector
from gateway.telemetry.telemetry import Telemetry
from tests.telemetry.conftest import make_record, scrape, value

HISTOGRAM_NAMES = [
    names.PROMETHEUS_NAMES[metric]
    for metric in (
        names.METRIC_REQUEST_DURATION,
        names.METRIC_TIME_TO_FIRST_BYTE,
        names.METRIC_OVERHEAD,
        names.METRIC_GEN_AI_OPERATION_DURATION,
        names.METRIC_GEN_AI_TOKEN_USAGE,
        names.METRIC_QUEUE_DURATION,
    )
]


def families(text: bytes) -> dict[str, str]:
    """The exposition split into its families (HELP, TYPE and samples), by name: their order may differ."""
    found: dict[str, str] = {}
    name = ""
    for line in text.decode().splitlines(keepends=True):
        if line.startswith("# HELP "):
            name = line.split()[2]
        found[name] = found.get(name, "") + line
    return found


def test_metrics_shows_histograms_byte_for_byte_as_the_opentelemetry_exporter() -> None:
    # The SDK path (histograms fed to the SDK for extra readers) into the OpenTelemetry Prometheus exporter
    # is what /metrics used to serve: it is the reference.
    reference = CollectorRegistry()
    telemetry = Telemetry(
        metric_readers=[PrometheusMetricReader(scope_info_enabled=False, registry=reference)]
    )
    try:
        telemetry.observe(make_record())
        telemetry.observe(make_record(latency_ms=250.0, ttfb_ms=1.0, overhead_ms=-3.0, prompt_tokens=16))
        telemetry.observe(make_record(latency_ms=-5.0, ttfb_ms=math.nan, upstream_ms=math.inf))  # dropped
        telemetry.observe(make_record(cache="exact", deployment=None, model=None, upstream_ms=None))
        telemetry.observe(make_record(status=504, error="upstream_timeout", completion_tokens=0))
        telemetry.observe(make_record(status=429, route=None, team=None, upstream_ms=None, ttfb_ms=None))
        telemetry.observe(make_record(latency_ms=1e9, prompt_tokens=10**9, model='m"x\\y\nz'))
        telemetry.observe(make_record(priority="deferrable", queue_ms=1500.0))
        telemetry.observe(make_record(priority="standard", queue_ms=1.0, deployment=None))  # not queued
        telemetry.record_histograms()
        ours, theirs = families(telemetry.prometheus_text()[0]), families(generate_latest(reference))
    finally:
        telemetry.shutdown()

    assert set(HISTOGRAM_NAMES) <= set(theirs)
    assert ours == theirs


def test_each_histogram_is_shown_once_when_extra_readers_get_it_too() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(metric_readers=[reader])
    try:
        telemetry.observe(make_record())
        text = telemetry.prometheus_text()[0].decode()
        samples = scrape(telemetry)
        data = reader.get_metrics_data()
    finally:
        telemetry.shutdown()

    for histogram in HISTOGRAM_NAMES:
        assert text.count(f"# TYPE {histogram} histogram") == 1, histogram
    latency = {"route": "cheap", "deployment": "mini", "status": "200", "cache": "miss"}
    assert value(samples, "gateway_request_duration_seconds_count", **latency) == 1
    assert data is not None
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == names.METRIC_REQUEST_DURATION
        for point in metric.data.data_points
    ]
    assert len(points) == 1 and isinstance(points[0], HistogramDataPoint) and points[0].count == 1


def collected(histogram: Histogram) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in HistogramCollector(histogram.lock, [histogram]).collect()
        for sample in family.samples
    }


def test_a_value_on_a_boundary_counts_in_its_bucket_and_unusable_values_are_dropped() -> None:
    histogram = Histogram(histograms.OVERHEAD, threading.Lock())
    cell = histogram.cell(("cheap",), {"route": "cheap"})
    with histogram.lock:
        for measured in (0.0, 0.0005, 0.00051, 2.0, -1.0, math.nan, math.inf):
            cell.record(measured)

    samples = collected(histogram)
    name = "gateway_request_overhead_seconds"

    def bucket(le: str) -> float:
        return samples[(f"{name}_bucket", frozenset({("route", "cheap"), ("le", le)}))]

    assert (bucket("0.0001"), bucket("0.0005"), bucket("0.001"), bucket("1.0"), bucket("+Inf")) == (
        1,
        2,
        3,
        3,
        4,
    )
    assert samples[(f"{name}_count", frozenset({("route", "cheap")}))] == 4
    assert samples[(f"{name}_sum", frozenset({("route", "cheap")}))] == 0.0005 + 0.00051 + 2.0


def test_a_series_shows_from_its_first_measurement_and_past_the_limit_series_overflow() -> None:
    histogram = Histogram(histograms.GEN_AI_TOKEN_USAGE, threading.Lock())
    histogram.cell(("unused",), {"model": "unused"})
    assert collected(histogram) == {}

    for team in range(MAX_SERIES + 10):
        cell = histogram.cell((team,), {"team": str(team)})
        with histogram.lock:
            cell.record(1)
    counts = {
        labels: count for (name, labels), count in collected(histogram).items() if name.endswith("_count")
    }
    # The unused series still takes one of the MAX_SERIES places, as it would in the SDK.
    assert len(counts) == MAX_SERIES
    assert counts[frozenset({("otel_metric_overflow", "true"), ("team", "")})] == 11


def test_collecting_on_another_thread_while_observing_sees_whole_records() -> None:
    telemetry = Telemetry()
    stop = threading.Event()
    seen: list[tuple[float | None, float | None]] = []
    latency = {"route": "cheap", "deployment": "mini", "status": "200", "cache": "miss"}

    def scraper() -> None:
        while not stop.is_set():
            samples = scrape(telemetry)
            seen.append(
                (
                    value(samples, "gateway_request_duration_seconds_count", **latency),
                    value(samples, "gateway_request_duration_seconds_bucket", **latency, le="+Inf"),
                )
            )

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for _ in range(5000):
            telemetry.observe(make_record())
    finally:
        stop.set()
        thread.join()
    try:
        assert value(scrape(telemetry), "gateway_request_duration_seconds_count", **latency) == 5000
    finally:
        telemetry.shutdown()
    assert all(count == total for count, total in seen)


def test_without_exported_readers_there_is_nothing_to_feed(telemetry: Telemetry) -> None:
    telemetry.observe(make_record())
    telemetry.record_histograms()
    asyncio.run(asyncio.wait_for(telemetry.run(), timeout=1))  # returns at once instead of looping
