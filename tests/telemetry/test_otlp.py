"""OTLP/HTTP export to a real collector on loopback: a small HTTP server that decodes what it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.telemetry import names
from gateway.telemetry.telemetry import RejectionKind, Telemetry
from tests.telemetry.conftest import make_record


@dataclass
class Collector:
    url: str
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)

    def span_names(self) -> set[str]:
        return {
            span.name
            for request in self.traces
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        }

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self.metrics
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def service_names(self) -> set[str]:
        resources = [r.resource for request in self.traces for r in request.resource_spans] + [
            r.resource for request in self.metrics for r in request.resource_metrics
        ]
        return {a.value.string_value for r in resources for a in r.attributes if a.key == "service.name"}


@pytest.fixture
def collector() -> Iterator[Collector]:
    received = Collector(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                received.traces.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                received.metrics.append(ExportMetricsServiceRequest.FromString(body))
                answer = ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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
        telemetry.count_cache_lookup("miss", "cheap")
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
