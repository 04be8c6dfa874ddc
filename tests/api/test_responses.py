"""`POST /v1/responses` (OpenAI's Responses API) through the official openai client, translated to the
chat fake upstream and back: plain, streamed, function tools and their outputs, structured output,
stored responses (`previous_response_id`, GET, DELETE, input items) scoped to the caller's team and
kept across a restart, and the ledger's record of each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import TOOL_ARGUMENTS, Behaviour
from tests.api.test_messages import cut_after, wait_for_rows
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "find_lighthouse",
        "description": "Find the nearest lighthouse",
        "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}}},
    }
]
ADMIN_KEY = "sk-admin-responses"


def routed(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream)},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "model_aliases": {"gpt-5*": "auto"},
    }


def test_a_plain_response_is_answered_stored_and_continued(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream))
    client = gw.client()
    first = client.responses.create(
        model="gpt-5-mini", instructions="Be brief.", input="What is the capital of France?"
    )
    assert first.status == "completed" and first.id.startswith("resp_")
    assert first.output_text == "Fake answer to: What is the capital of France?"
    assert first.usage is not None and first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert upstream.requests[-1].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    second = client.responses.create(model="gpt-5-mini", input="And of Spain?", previous_response_id=first.id)
    assert second.output_text == "Fake answer to: And of Spain?"
    sent = upstream.requests[-1].body["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == first.output_text
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    items = client.responses.input_items.list(first.id)
    assert [item.type for item in items.data] == ["message"]
    records = ledger_rows(gw, bg)
    assert [record["api"] for record in records] == ["responses", "responses"]


def test_a_streamed_function_call_and_its_output_round_trip(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams(Behaviour(tool_call=True))
    gw = gateway(routed(upstream))
    client = gw.client()
    with client.responses.stream(
        model="auto", input="Where is the lighthouse near Brest?", tools=TOOLS
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "find_lighthouse" and call.arguments == TOOL_ARGUMENTS
    assert final.usage is not None and final.usage.output_tokens > 0
    upstream.script(Behaviour(content="The keeper is Anne."))
    answer = client.responses.create(
        model="auto",
        previous_response_id=final.id,
        tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Anne"}],
    )
    assert answer.output_text == "The keeper is Anne."
    sent = upstream.requests[-1].body["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "Anne"}


def test_structured_output_asks_the_upstream_for_the_schema(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams(Behaviour(content='{"city": "Paris"}'))
    gw = gateway(routed(upstream))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer = gw.client().responses.create(
        model="auto",
        input="Capital of France?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        store=False,
    )
    assert answer.output_text == '{"city": "Paris"}'
    assert upstream.requests[-1].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    with pytest.raises(openai.NotFoundError):
        gw.client().responses.retrieve(answer.id)  # store: false keeps nothing


def test_another_teams_response_is_not_found_and_delete_removes_ones_own(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream), admin_keys=[ADMIN_KEY])
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    keys = {
        team: httpx.post(f"{gw.url}/admin/keys", json={"team": team}, headers=admin).json()["key"]
        for team in ("search", "ads")
    }
    search, ads = gw.client(api_key=keys["search"]), gw.client(api_key=keys["ads"])
    mine = search.responses.create(model="auto", input="hello")
    with pytest.raises(openai.NotFoundError):
        ads.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        ads.responses.create(model="auto", input="and?", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        ads.responses.delete(mine.id)
    assert search.responses.retrieve(mine.id).id == mine.id
    search.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        search.responses.retrieve(mine.id)


def test_a_stored_response_survives_a_restart(upstreams: Upstreams, gateway: Gateway, tmp_path: Path) -> None:
    upstream = upstreams()
    first = gateway(routed(upstream), state_dir=tmp_path / "kept")
    stored = first.client().responses.create(model="auto", input="remember me")
    first.server.should_exit = True
    assert first.task is not None
    first.task.result(timeout=30)
    again = gateway(routed(upstream), state_dir=tmp_path / "kept")
    assert again.client().responses.retrieve(stored.id).output_text == stored.output_text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto"}, "input"),
        ({"model": "auto", "input": 3}, "input"),
        ({"model": "auto", "input": [{"type": "web_search_call", "id": "x"}]}, "input.0.type"),
        ({"model": "auto", "input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"model": "auto", "input": "hi", "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_input_is_refused_in_openais_format_and_calls_nothing(
    upstreams: Upstreams, gateway: Gateway, body: dict[str, Any], param: str
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream))
    response = httpx.post(f"{gw.base_url}/responses", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert upstream.requests == []


def test_a_stream_the_client_cuts_is_recorded_with_what_it_produced(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    story = " ".join(f"word{n}" for n in range(40))
    upstream = upstreams(Behaviour(content=story, chunks=40, chunk_delay=0.05))
    gw = gateway(routed(upstream))
    body = {"model": "auto", "input": "go", "stream": True}
    assert cut_after(f"{gw.url}/v1/responses", body, 8) == 8
    [record] = wait_for_rows(gw, bg, 1)
    assert (record["api"], record["status"], record["estimated"]) == ("responses", 499, 1)
    assert 0 < record["completion_tokens"] < 40 and record["prompt_tokens"] > 0
