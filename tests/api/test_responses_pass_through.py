"""`POST /v1/responses` to a deployment that serves the Responses API itself (`responses_api: true`):
the client's body goes as it is (only `model` replaced, `store: false`), the bytes come back untouched,
streams included; the gateway keeps stored responses whichever upstream answered, so a conversation
continues by `previous_response_id` across pass-through and translated turns. Against the fake OpenAI
upstream's Responses endpoint (which stores nothing and refuses `previous_response_id`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import TOOL_ARGUMENTS, Behaviour
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}
TOOLS: list[Any] = [{"type": "function", "name": "find_lighthouse", "parameters": {"type": "object"}}]


def native(upstream: FakeOpenAIUpstream, chat: FakeOpenAIUpstream | None = None) -> dict[str, Any]:
    deployments = {"gpt": openai_deployment(upstream, responses_api=True, price=PRICE)}
    routes: dict[str, Any] = {"frontier": ["gpt"]}
    if chat is not None:
        deployments["small"] = openai_deployment(chat)
        routes["local"] = ["small"]
    return {"deployments": deployments, "routes": routes, "default_route": "frontier"}


def test_a_response_passes_through_and_the_gateway_stores_it(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(native(upstream))
    client = gw.client()
    first = client.responses.create(
        model="auto", instructions="Be brief.", input="What is the capital of France?"
    )
    assert first.id.startswith("resp_fake")  # the upstream's own object
    assert first.output_text == "Fake answer to: What is the capital of France?"
    sent = upstream.requests[-1]
    assert sent.body == {
        "model": "fake-model",
        "instructions": "Be brief.",
        "input": "What is the capital of France?",
        "store": False,
    }
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(model="auto", input="And of Spain?", previous_response_id=first.id)
    assert second.output_text == "Fake answer to: And of Spain?"
    history = upstream.requests[-1].body
    assert "previous_response_id" not in history
    assert [item.get("role") for item in history["input"]] == ["user", "assistant", "user"]
    records = ledger_rows(gw, bg)
    assert [record["api"] for record in records] == ["responses", "responses"]
    assert records[0]["prompt_tokens"] == first.usage.input_tokens  # type: ignore[union-attr]
    assert records[0]["cost_usd"] == pytest.approx(
        (first.usage.input_tokens + first.usage.output_tokens) * 0.001  # type: ignore[union-attr]
    )


def test_a_streamed_function_call_passes_through_with_its_usage_recorded(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams(Behaviour(tool_call=True))
    gw = gateway(native(upstream))
    with gw.client().responses.stream(model="auto", input="Where is the lighthouse?", tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.completed") == 1
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.arguments == TOOL_ARGUMENTS and final.id.startswith("resp_fake")
    assert upstream.requests[-1].body["tools"] == TOOLS
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["stream"], record["status"]) == ("responses", 1, 200)
    assert record["completion_tokens"] == final.usage.output_tokens > 0  # type: ignore[union-attr]


def test_a_conversation_continues_from_a_pass_through_turn_on_a_chat_only_upstream(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream, chat = upstreams(), upstreams()
    gw = gateway(native(upstream, chat))
    client = gw.client()
    first = client.responses.create(model="frontier", input="What is the capital of France?")
    second = client.responses.create(model="local", input="And of Spain?", previous_response_id=first.id)
    assert second.output_text == "Fake answer to: And of Spain?"
    assert chat.requests[-1].body["messages"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And of Spain?"},
    ]
    third = client.responses.create(model="frontier", input="And of Italy?", previous_response_id=second.id)
    assert third.output_text == "Fake answer to: And of Italy?"
    assert len(upstream.requests[-1].body["input"]) == 5


def test_an_upstream_failure_is_an_error_in_openais_format(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams(Behaviour(status=400, error_message="bad tool"))
    gw = gateway(native(upstream))
    with pytest.raises(openai.BadRequestError) as raised:
        gw.client().responses.create(model="auto", input="hi")
    assert "bad tool" in str(raised.value)
