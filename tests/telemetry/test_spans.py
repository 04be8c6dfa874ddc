"""The spans of one request: a SERVER root with policy, cache and upstream children, explicitly parented,
closed from the spend record."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from gateway.telemetry import names
from gateway.telemetry.telemetry import Telemetry
from tests.telemetry.conftest import make_record

# A span from some other trace, made current where the pipeline may find one it did not start.
ELSEWHERE = trace.NonRecordingSpan(
    SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
)


def by_name(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = spans.get_finished_spans()
    found = {span.name: span for span in finished}
    assert len(found) == len(finished), "span names repeat"
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_request_span_with_its_children(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    request = traced.start_request("req-1", "auto", stream=False, max_tokens=256)
    with request.child(names.SPAN_POLICY, {names.GATEWAY_POLICY: "default"}):
        pass
    with request.child(names.SPAN_CACHE) as lookup:
        lookup.set(names.GATEWAY_CACHE, "miss")
    upstream = request.start_child(names.SPAN_UPSTREAM, {names.GATEWAY_DEPLOYMENT: "mini"})
    upstream.end()
    request.finish(make_record())

    found = by_name(spans)
    assert set(found) == {names.SPAN_REQUEST, names.SPAN_POLICY, names.SPAN_CACHE, names.SPAN_UPSTREAM}
    root = found[names.SPAN_REQUEST]
    assert root.kind is SpanKind.SERVER
    assert root.parent is None
    assert root.status.status_code is StatusCode.UNSET
    for child in (names.SPAN_POLICY, names.SPAN_CACHE, names.SPAN_UPSTREAM):
        assert parent_of(found[child]) == root.context.span_id
        assert found[child].context.trace_id == root.context.trace_id
    assert found[names.SPAN_UPSTREAM].kind is SpanKind.CLIENT
    assert found[names.SPAN_POLICY].kind is SpanKind.INTERNAL
    assert found[names.SPAN_CACHE].attributes == {names.GATEWAY_CACHE: "miss"}
    assert found[names.SPAN_UPSTREAM].attributes == {names.GATEWAY_DEPLOYMENT: "mini"}

    assert dict(root.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "auto",
        "gen_ai.request.stream": False,
        "gen_ai.request.max_tokens": 256,
        "gateway.request_id": "req-1",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 40,
        "gen_ai.usage.reasoning.output_tokens": 5,
        "gateway.policy": "default",
        "gateway.route": "cheap",
        "gateway.rule": "short-prompts",
        "gateway.team": "search",
        "gateway.deployment": "mini",
        "gateway.cache": "miss",
        "gateway.cost_usd": 0.25,
        "gateway.saved_usd": 0.75,
        "gateway.estimated_usage": False,
        "http.response.status_code": 200,
    }
    assert root.resource.attributes["service.name"] == "gateway"


def test_a_failed_request_is_an_error_span(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    request = traced.start_request("req-1", "auto", stream=True)
    request.start_child(names.SPAN_UPSTREAM).end(error="upstream_error")
    request.finish(make_record(status=502, error="upstream_error", cost_usd=None, model=None))

    found = by_name(spans)
    root = found[names.SPAN_REQUEST]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "upstream_error"
    assert root.attributes is not None
    assert root.attributes["error.type"] == "upstream_error"
    assert root.attributes["http.response.status_code"] == 502
    assert "gateway.cost_usd" not in root.attributes  # unknown, not $0
    assert "gen_ai.response.model" not in root.attributes
    upstream = found[names.SPAN_UPSTREAM]
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.attributes == {"error.type": "upstream_error"}


def test_an_error_without_a_class_is_typed_by_its_status(
    traced: Telemetry, spans: InMemorySpanExporter
) -> None:
    traced.start_request("req-1", "auto", stream=False).finish(make_record(status=500, error=None))
    root = by_name(spans)[names.SPAN_REQUEST]
    assert root.attributes is not None and root.attributes["error.type"] == "500"


def test_a_step_that_raises_is_a_failed_child(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    request = traced.start_request("req-1", "auto", stream=False)
    with pytest.raises(ValueError), request.child(names.SPAN_POLICY):
        raise ValueError("bad policy")
    request.finish(make_record(status=500, error="internal_error"))

    policy = by_name(spans)[names.SPAN_POLICY]
    assert policy.status.status_code is StatusCode.ERROR
    assert policy.attributes is not None and policy.attributes["error.type"] == "ValueError"
    assert [event.name for event in policy.events] == ["exception"]


def test_finish_and_end_happen_once(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    request = traced.start_request("req-1", "auto", stream=False)
    child = request.start_child(names.SPAN_CACHE)
    child.end()
    child.end(error="late")
    request.finish(make_record())
    request.finish(make_record(status=500))

    found = by_name(spans)
    assert len(found) == 2
    assert found[names.SPAN_REQUEST].status.status_code is StatusCode.UNSET
    assert found[names.SPAN_CACHE].status.status_code is StatusCode.UNSET


def test_a_streams_upstream_span_ends_after_the_handler(
    traced: Telemetry, spans: InMemorySpanExporter
) -> None:
    request = traced.start_request("req-1", "auto", stream=True)
    upstream = request.start_child(names.SPAN_UPSTREAM)
    # The handler has returned; something else is current while the stream drains.
    with trace.use_span(ELSEWHERE):
        upstream.end()
        request.finish(make_record(stream=True))

    found = by_name(spans)
    assert parent_of(found[names.SPAN_UPSTREAM]) == found[names.SPAN_REQUEST].context.span_id


def test_the_ambient_span_is_never_the_parent(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    with trace.use_span(ELSEWHERE):
        request = traced.start_request("req-1", "auto", stream=False)
        with request.child(names.SPAN_POLICY):
            pass
        request.finish(make_record())

    found = by_name(spans)
    assert found[names.SPAN_REQUEST].parent is None
    assert found[names.SPAN_REQUEST].context.trace_id != ELSEWHERE.get_span_context().trace_id
    assert parent_of(found[names.SPAN_POLICY]) == found[names.SPAN_REQUEST].context.span_id


def test_a_clients_traceparent_joins_its_trace(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    request = traced.start_request("req-1", "auto", stream=False, traceparent=f"00-{trace_id}-{parent_id}-01")
    request.child(names.SPAN_POLICY).end()
    request.finish(make_record())

    found = by_name(spans)
    root = found[names.SPAN_REQUEST]
    assert root.context.trace_id == int(trace_id, 16)
    assert parent_of(root) == int(parent_id, 16)
    assert found[names.SPAN_POLICY].context.trace_id == int(trace_id, 16)


def test_a_malformed_traceparent_starts_a_new_trace(traced: Telemetry, spans: InMemorySpanExporter) -> None:
    traced.start_request("req-1", "auto", stream=False, traceparent="not-a-traceparent").finish(make_record())
    assert by_name(spans)[names.SPAN_REQUEST].parent is None
