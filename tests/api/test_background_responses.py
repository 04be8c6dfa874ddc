"""`background: true` with OpenAI's client: queued at once, answered later in spare capacity, polled
until completed; a failed one says why; a stream or an unstored one is refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, ledger_rows, openai_deployment


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream, capacity={"max_concurrency": 1, "queue": 8})},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
    }


def polled(client: openai.OpenAI, response_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.1)


def test_a_background_response_is_queued_then_completed(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    upstream = upstreams(Behaviour(latency=0.2))
    gw = gateway(spec(upstream))
    client = gw.client()
    queued = client.responses.create(model="auto", input="Summarise the report.", background=True)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    done = polled(client, queued.id)
    assert done.status == "completed" and done.id == queued.id and done.background is True
    assert done.output_text
    # It continues like any stored response.
    follow = client.responses.create(model="auto", input="Shorter.", previous_response_id=done.id)
    assert follow.status == "completed"
    assert upstream.requests[-1].body["messages"][0]["content"] == "Summarise the report."
    [row] = [r for r in ledger_rows(gw, bg) if r["api"] == "responses" and r["priority"] == "deferrable"]
    assert row["status"] == 200
    # The job is the gateway's own: not among the client's batches.
    assert client.batches.list().data == []


def test_a_background_response_that_fails_says_why(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams(Behaviour(status=400, error_message="no such thing"))
    gw = gateway(spec(upstream))
    client = gw.client()
    queued = client.responses.create(model="auto", input="x", background=True)
    done = polled(client, queued.id)
    assert done.status == "failed" and done.error is not None
    assert "no such thing" in done.error.message


def test_a_background_response_is_neither_streamed_nor_unstored(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    client = gateway(spec(upstreams())).client()
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.responses.create(model="auto", input="x", background=True, stream=True)
    with pytest.raises(openai.BadRequestError, match="stored"):
        client.responses.create(model="auto", input="x", background=True, store=False)
