"""Traces of real requests, exported over OTLP/HTTP to a collector on loopback: a `gateway.chat` span per
request with its policy and upstream children, the GenAI and gateway attributes, and the client's trace
joined when it sends a `traceparent`."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, openai_deployment
from tests.otlp_collector import Collector, running_collector

Gateway = Callable[..., RunningGateway]
CLIENT_KEY = "sk-tracing-client"
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 10000}
MESSAGES: list[Any] = [{"role": "user", "content": "Describe the lighthouse at dawn"}]


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as received:
        yield received


def attributes(span: Span) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        found[attribute.key] = getattr(attribute.value, kind) if kind is not None else None
    return found


def traced_gateway(
    gateway: Gateway, upstreams: Callable[..., FakeOpenAIUpstream], url: str
) -> RunningGateway:
    upstream = upstreams(Behaviour(content="The light turns slowly over a grey sea", chunks=4))
    spec = {
        "deployments": {"big": openai_deployment(upstream, price=PRICE)},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "reference_route": "frontier",
    }
    return gateway(spec, api_keys=[CLIENT_KEY], otlp_endpoint=url)


def stop(gw: RunningGateway) -> None:
    """A clean shutdown, which flushes the batched spans to the collector (the fixture's own stop at the
    end of the test then finds the server already done)."""
    gw.server.should_exit = True
    assert gw.task is not None
    gw.task.result(timeout=30)


def test_each_request_is_a_chat_span_with_policy_and_upstream_children(
    collector: Collector, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = traced_gateway(gateway, upstreams, collector.url)
    client = gw.client(api_key=CLIENT_KEY)
    plain = client.chat.completions.create(
        model="auto", messages=MESSAGES, max_tokens=50, extra_headers={"x-request-id": "req-plain"}
    )
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "req-stream"},
        )
    )
    usages = {"req-plain": plain.usage, "req-stream": chunks[-1].usage}
    stop(gw)

    spans = collector.spans()
    assert sorted(span.name for span in spans) == sorted(
        ["gateway.chat", "gateway.policy.decide", "gateway.upstream"] * 2
    )
    assert collector.service_names() == {"gateway"}
    roots = {attributes(span)["gateway.request_id"]: span for span in spans if span.name == "gateway.chat"}
    assert set(roots) == {"req-plain", "req-stream"}
    assert roots["req-plain"].trace_id != roots["req-stream"].trace_id  # a trace per request
    for request_id, root in roots.items():
        usage = usages[request_id]
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert root.parent_span_id == b"" and root.kind == Span.SPAN_KIND_SERVER
        children = {span.name: span for span in spans if span.parent_span_id == root.span_id}
        assert set(children) == {"gateway.policy.decide", "gateway.upstream"}
        for child in children.values():
            assert child.trace_id == root.trace_id
            assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
            assert child.end_time_unix_nano <= root.end_time_unix_nano
        assert children["gateway.upstream"].kind == Span.SPAN_KIND_CLIENT
        assert children["gateway.policy.decide"].kind == Span.SPAN_KIND_INTERNAL
        # The policy decides before the upstream is called.
        assert (
            children["gateway.policy.decide"].end_time_unix_nano
            <= children["gateway.upstream"].start_time_unix_nano
        )

        found = attributes(root)
        cost = (usage.prompt_tokens * 1000 + usage.completion_tokens * 10000) / 1e6
        assert found == {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "auto",
            "gen_ai.request.stream": request_id == "req-stream",
            "gateway.request_id": request_id,
            "gen_ai.response.model": "fake-model",
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "gateway.policy": "policy-0",
            "gateway.route": "frontier",
            "gateway.rule": "default",
            "gateway.team": "default",
            "gateway.deployment": "big",
            "gateway.cache": "miss",
            "gateway.cost_usd": pytest.approx(cost, rel=1e-9),
            "gateway.saved_usd": 0.0,
            "gateway.estimated_usage": False,
            "http.response.status_code": 200,
        }
    # The final metric export at shutdown reaches the same collector.
    assert {"gateway.requests", "gateway.cost", "gateway.tokens"} <= collector.metric_names()


def test_a_client_traceparent_makes_the_request_join_its_trace(
    collector: Collector, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = traced_gateway(gateway, upstreams, collector.url)
    client = gw.client(api_key=CLIENT_KEY)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    client.chat.completions.create(
        model="auto", messages=MESSAGES, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    list(
        client.chat.completions.create(
            model="auto",
            messages=MESSAGES,
            stream=True,
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
    )
    # A malformed traceparent is ignored: the request starts its own trace.
    client.chat.completions.create(
        model="auto", messages=MESSAGES, extra_headers={"traceparent": "00-nonsense"}
    )
    stop(gw)

    spans = collector.spans()
    roots = [span for span in spans if span.name == "gateway.chat"]
    assert len(roots) == 3 and len(spans) == 9
    joined = [root for root in roots if root.trace_id.hex() == trace_id]
    assert len(joined) == 2
    for root in joined:
        assert root.parent_span_id.hex() == parent_id
        children = [span for span in spans if span.parent_span_id == root.span_id]
        assert sorted(child.name for child in children) == ["gateway.policy.decide", "gateway.upstream"]
        assert {child.trace_id.hex() for child in children} == {trace_id}
    (alone,) = [root for root in roots if root.trace_id.hex() != trace_id]
    assert alone.parent_span_id == b""
    assert attributes(alone)["http.response.status_code"] == 200


def test_a_failed_upstream_call_is_an_error_span(
    collector: Collector, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    failing = upstreams(Behaviour(status=500))
    spec = {
        "deployments": {"broken": openai_deployment(failing, price=PRICE, retries=0)},
        "routes": {"flaky": ["broken"]},
        "default_route": "flaky",
    }
    gw = gateway(spec, api_keys=[CLIENT_KEY], otlp_endpoint=collector.url)
    with pytest.raises(openai.APIStatusError) as failed:
        gw.client(api_key=CLIENT_KEY).chat.completions.create(model="auto", messages=MESSAGES)
    assert failed.value.status_code == 502
    stop(gw)

    spans = {span.name: span for span in collector.spans()}
    assert set(spans) == {"gateway.chat", "gateway.policy.decide", "gateway.upstream"}
    root, upstream = spans["gateway.chat"], spans["gateway.upstream"]
    assert upstream.parent_span_id == root.span_id
    for span in (root, upstream):
        assert span.status.code == span.status.STATUS_CODE_ERROR
        assert attributes(span)["error.type"] == "bad_gateway"
    found = attributes(root)
    assert (found["http.response.status_code"], found["gateway.route"], found["gateway.team"]) == (
        502,
        "flaky",
        "default",
    )
    assert found["gateway.cost_usd"] == 0.0 and found["gen_ai.usage.output_tokens"] == 0
    assert (
        spans["gateway.policy.decide"].status.code == spans["gateway.policy.decide"].status.STATUS_CODE_UNSET
    )
