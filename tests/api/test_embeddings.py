"""`POST /v1/embeddings` through the official openai client: routed to an upstream's embeddings (its body
passed on) or to the gateway's own embedder, with usage and cost in the ledger."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream, fake_vector
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 0}


def embedding_routes(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {
            "chat": openai_deployment(upstream),
            "embedder": openai_deployment(upstream, model="fake-embedder", price=PRICE),
            "minilm": {"provider": "local-embedder"},
        },
        "routes": {"frontier": ["chat"], "embed": ["embedder"], "local-embed": ["minilm"]},
        "default_route": "frontier",
        "embeddings_route": "embed",
    }


def test_auto_goes_to_the_policys_embeddings_route_and_the_upstreams_vectors_come_back(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(embedding_routes(upstream))
    raw = gw.client().embeddings.with_raw_response.create(model="auto", input=["a lighthouse", "a harbour"])
    answer = raw.parse()
    assert answer.data[0].embedding == pytest.approx(fake_vector("a lighthouse"), abs=1e-6)
    assert answer.data[1].embedding == pytest.approx(fake_vector("a harbour"), abs=1e-6)
    assert answer.usage.prompt_tokens == 4
    assert raw.headers["x-gateway-route"] == "embed"
    assert raw.headers["x-gateway-deployment"] == "embedder"
    assert raw.headers["x-gateway-rule"] == "embeddings_route"
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(4 * 0.001)
    sent = upstream.requests[-1]
    assert sent.body["model"] == "fake-embedder" and sent.body["input"] == ["a lighthouse", "a harbour"]
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["route"], record["prompt_tokens"]) == ("embeddings", "embed", 4)
    assert record["cost_usd"] == pytest.approx(4 * 0.001)


def test_base64_vectors_are_passed_on_as_the_upstream_encoded_them(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway(embedding_routes(upstream))
    answer = gw.client().embeddings.create(model="embed", input="a lighthouse", encoding_format="base64")
    encoded = answer.data[0].embedding
    assert isinstance(encoded, str)
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert list(decoded) == pytest.approx(fake_vector("a lighthouse"), abs=1e-6)


def test_the_gateways_own_embedder_answers_at_no_cost(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams()
    gw = gateway(embedding_routes(upstream))
    raw = gw.client().embeddings.with_raw_response.create(
        model="local-embed", input=["a lighthouse", "a lighthouse", "rain"]
    )
    answer = raw.parse()
    vectors = [item.embedding for item in answer.data]
    assert len(vectors[0]) == 384
    assert vectors[0] == vectors[1] != vectors[2]
    assert sum(value * value for value in vectors[0]) == pytest.approx(1.0, abs=1e-3)
    assert float(raw.headers["x-gateway-cost-usd"]) == 0
    assert answer.usage.prompt_tokens > 0
    assert upstream.requests == []
    short = gw.client().embeddings.create(model="minilm", input="rain", dimensions=64)
    assert len(short.data[0].embedding) == 64


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto"}, "input"),
        ({"model": "auto", "input": ""}, "input"),
        ({"model": "auto", "input": []}, "input"),
        ({"model": "auto", "input": ["ok", 3]}, "input"),
        ({"model": "auto", "input": ["ok", {"text": "no"}]}, "input.1"),
        ({"model": "auto", "input": "hi", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "hi"}, "model"),
        ({"model": "minilm", "input": [[1, 2, 3]]}, "input"),
    ],
)
def test_bad_input_is_refused_in_openais_format_and_calls_nothing(
    upstreams: Upstreams, gateway: Gateway, body: dict[str, Any], param: str
) -> None:
    upstream = upstreams()
    gw = gateway(embedding_routes(upstream))
    response = httpx.post(f"{gw.base_url}/embeddings", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert upstream.requests == []


def test_a_policy_without_an_embeddings_route_says_so_for_auto(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    spec = embedding_routes(upstream)
    del spec["embeddings_route"]
    gw = gateway(spec)
    with pytest.raises(openai.BadRequestError) as raised:
        gw.client().embeddings.create(model="auto", input="hi")
    assert "embeddings_route" in str(raised.value)


def test_the_policys_embeddings_cache_answers_the_same_inputs_again_at_no_cost(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway({**embedding_routes(upstream), "embeddings_cache": {"ttl_seconds": 600}})
    client = gw.client()
    first = client.embeddings.with_raw_response.create(model="auto", input=["a lighthouse"])
    again = client.embeddings.with_raw_response.create(model="auto", input=["a lighthouse"])
    other = client.embeddings.with_raw_response.create(model="auto", input=["a lighthouse"], dimensions=4)
    assert [r.headers["x-gateway-cache"] for r in (first, again, other)] == ["miss", "exact", "miss"]
    assert again.parse().data[0].embedding == first.parse().data[0].embedding
    assert float(again.headers["x-gateway-cost-usd"]) == 0
    assert len(upstream.requests) == 2
    fresh = client.embeddings.with_raw_response.create(
        model="auto", input=["a lighthouse"], extra_headers={"cache-control": "no-cache"}
    )
    assert fresh.headers.get("x-gateway-cache") is None and len(upstream.requests) == 3
