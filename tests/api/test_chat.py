"""The chat endpoint through the official openai client, against fake upstreams on loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


def single_route(upstream: FakeOpenAIUpstream, **deployment: Any) -> dict[str, Any]:
    return {
        "deployments": {"primary": openai_deployment(upstream, **deployment)},
        "routes": {"frontier": ["primary"]},
        "default_route": "frontier",
    }


def test_non_streaming_answer_passes_fields_through_and_says_who_answered(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway(single_route(upstream))
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=MESSAGES,
        seed=7,
        n=2,
        response_format={"type": "json_object"},
        extra_body={"custom_field": {"kept": True}},
        extra_headers={"x-request-id": "req-123"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Fake answer to: What is the capital of France?"
    assert len(completion.choices) == 2
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-request-id"] == "req-123"
    assert raw.headers["x-gateway-route"] == "frontier"
    assert raw.headers["x-gateway-deployment"] == "primary"
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    assert "x-gateway-fallback" not in raw.headers
    sent = upstream.requests[-1].body
    assert sent["model"] == "fake-model"
    assert sent["seed"] == 7 and sent["n"] == 2
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["custom_field"] == {"kept": True}


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_reports_usage_only_when_asked_but_always_asks_upstream(
    upstreams: Upstreams, gateway: Gateway, include_usage: bool
) -> None:
    upstream = upstreams(Behaviour(chunks=20))
    gw = gateway(single_route(upstream))
    stream = gw.client().chat.completions.create(
        model="frontier",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True} if include_usage else None,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Fake answer to:")
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(text.split())  # the fake counts words
    else:
        assert usage_chunks == []
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}


def test_stream_ends_with_done_and_carries_routing_headers(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams(Behaviour(chunks=5))
    gw = gateway(single_route(upstream))
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body) as response:
        raw = response.read()
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-gateway-deployment"] == "primary"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b"data: ") == 1 + 5 + 1 + 1  # role chunk, content, finish, [DONE]


@pytest.mark.parametrize("chunks", [1, 3])
def test_text_that_looks_like_the_end_or_usage_is_only_text(
    upstreams: Upstreams, gateway: Gateway, chunks: int
) -> None:
    """The stream is passed on without parsing every event: `data: [DONE]` or `"usage": {` inside an
    answer's text neither ends the stream nor is taken for usage."""
    content = 'Write "data: [DONE]" then "usage": {"total_tokens": 1} and go on'
    upstream = upstreams(Behaviour(content=content, chunks=chunks))
    gw = gateway(single_route(upstream))
    stream = gw.client().chat.completions.create(
        model="auto", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    received = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == content
    assert received[-1].usage is not None and received[-1].usage.completion_tokens == len(content.split())


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_reach_the_client(upstreams: Upstreams, gateway: Gateway, stream: bool) -> None:
    upstream = upstreams(Behaviour(tool_call=True))
    gw = gateway(single_route(upstream))
    tools: list[Any] = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    if stream:
        chunks = list(
            gw.client().chat.completions.create(model="auto", messages=MESSAGES, tools=tools, stream=True)
        )
        calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function is not None and calls[0].function.name == "lookup"
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        completion = gw.client().chat.completions.create(model="auto", messages=MESSAGES, tools=tools)
        call = completion.choices[0].message.tool_calls
        assert call is not None and call[0].function.name == "lookup"  # type: ignore[union-attr]
    assert upstream.requests[-1].body["tools"] == tools


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "auto"}', 400, "messages"),
        (b'{"model": "auto", "messages": "hello"}', 400, "messages"),
        (b'{"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role"),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            400,
            "stream",
        ),
        (b'{"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ],
)
def test_bad_input_gets_an_openai_error_and_reaches_no_upstream(
    upstreams: Upstreams, gateway: Gateway, body: bytes, status: int, param: str | None
) -> None:
    upstream = upstreams()
    gw = gateway(single_route(upstream))
    response = httpx.post(
        f"{gw.base_url}/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]
    assert upstream.requests == []


def test_oversize_body_is_refused_with_413(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams()
    gw = gateway(single_route(upstream), max_body_bytes=10_000)
    big = [{"role": "user", "content": "x" * 20_000}]
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="auto", messages=big)
    assert caught.value.status_code == 413
    assert upstream.requests == []


def test_keys_are_required_when_configured(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams()
    gw = gateway(single_route(upstream), api_keys="sk-team-a,sk-team-b")
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong").chat.completions.create(model="auto", messages=MESSAGES)
    missing = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": MESSAGES})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert upstream.requests == []
    answer = gw.client(api_key="sk-team-b").chat.completions.create(model="auto", messages=MESSAGES)
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong").models.list()


def test_models_lists_routes_and_deployments_without_credentials(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    config = single_route(upstream, api_key_env="UPSTREAM_KEY")
    gw = gateway(config, environ={"UPSTREAM_KEY": "sk-secret-provider-key"})
    response = httpx.get(f"{gw.base_url}/models")
    ids = [m["id"] for m in response.json()["data"]]
    assert ids == ["auto", "frontier", "primary"]
    assert "sk-secret" not in response.text
    assert response.headers["x-request-id"]
    assert upstream.requests == []
    gw.client().chat.completions.create(model="primary", messages=MESSAGES)
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-secret-provider-key"


def test_unknown_path_and_method_get_openai_errors(upstreams: Upstreams, gateway: Gateway) -> None:
    gw = gateway(single_route(upstreams()))
    missing = httpx.get(f"{gw.url}/v1/embeddingz")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(f"{gw.base_url}/chat/completions")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.json()["error"]["message"]


def test_health_and_readiness(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams()
    ready = gateway(single_route(upstream))
    assert httpx.get(f"{ready.url}/healthz").json() == {"status": "ok"}
    readyz = httpx.get(f"{ready.url}/readyz")
    assert readyz.status_code == 200 and readyz.json()["deployments"]["primary"]["circuit"] == "closed"
    not_ready = gateway(single_route(upstream, api_key_env="UNSET_KEY"))
    assert httpx.get(f"{not_ready.url}/healthz").status_code == 200
    assert httpx.get(f"{not_ready.url}/readyz").status_code == 503


def test_a_stream_without_upstream_usage_still_ends_with_an_estimated_usage_chunk(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams(Behaviour(chunks=7, usage=False))
    gw = gateway(single_route(upstream))
    chunks = list(
        gw.client().chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == 7
    assert usage.prompt_tokens == 3 + 7  # "What is the capital of France?" is 7 tokens in cl100k_base
    assert usage.model_extra == {"estimated": True}


def test_azure_style_deployments_send_the_key_in_an_api_key_header(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    config = single_route(upstream, api_key_env="AZURE_KEY", auth_header="api-key", api_version="2024-10-21")
    gw = gateway(config, environ={"AZURE_KEY": "azure-secret"})
    gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    headers = upstream.requests[-1].headers
    assert headers["api-key"] == "azure-secret"
    assert "authorization" not in headers
    assert upstream.requests[-1].query == {"api-version": "2024-10-21"}
