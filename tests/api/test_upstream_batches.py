"""Batch lines routed to a deployment with its own Batch API (`batch_api: true`) go there, collected
into one upstream batch, and are priced at the batch price: driven with OpenAI's client against the
gateway, and a fake OpenAI Batch API upstream on loopback."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.batch_upstream import ANSWER_WORDS, FakeBatchUpstream
from gateway.fakes.script import prompt_tokens
from tests.api.test_batches import chat_line, finished, jsonl
from tests.conftest import RunningGateway, ledger_rows

# USD per million tokens: the deployment's ordinary price, and its Batch API's (half).
PRICE = {"input_per_mtok": 10, "output_per_mtok": 30, "batch_input_per_mtok": 5, "batch_output_per_mtok": 15}


@pytest.fixture
def batch_upstream(bg: BackgroundLoop) -> Iterator[FakeBatchUpstream]:
    upstream = FakeBatchUpstream(complete_after=0.3)
    bg.run(upstream.start())
    yield upstream
    bg.run(upstream.stop())


def spec(upstream: FakeBatchUpstream) -> dict[str, Any]:
    return {
        "deployments": {
            "big": {
                "provider": "openai",
                "model": "upstream-model",
                "api_base": upstream.base_url,
                "price": PRICE,
                "batch_api": True,
            },
        },
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "reference_route": "frontier",
    }


def start(gateway: Callable[..., RunningGateway], upstream: FakeBatchUpstream) -> RunningGateway:
    # Two lines at a time: only parking lets all of them gather into one upstream batch.
    return gateway(
        spec(upstream), batch_concurrency=2, upstream_batch_flush_seconds=1.0,
        upstream_batch_poll_seconds=0.1,
    )  # fmt: skip


def batch_cost(text: str) -> float:
    prompt = prompt_tokens([{"role": "user", "content": text}])
    return (prompt * PRICE["batch_input_per_mtok"] + ANSWER_WORDS * PRICE["batch_output_per_mtok"]) / 1e6


def submit(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


def test_lines_go_to_the_upstream_batch_api_at_its_batch_price(
    batch_upstream: FakeBatchUpstream, gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    gw = start(gateway, batch_upstream)
    client = gw.client()
    texts = [f"Batch question number {n}?" for n in range(6)]
    batch_id = submit(client, [chat_line(f"q{n}", text) for n, text in enumerate(texts)])
    done = finished(client, batch_id)
    assert done.status == "completed" and done.request_counts.completed == 6  # type: ignore[union-attr]
    # One upstream batch held all six lines, each with the deployment's own model; none was called.
    (upstream_batch,) = batch_upstream.created()
    assert sorted(line["custom_id"] for line in upstream_batch.lines) == [
        f"{batch_id}:{n}" for n in range(1, 7)
    ]
    assert {line["body"]["model"] for line in upstream_batch.lines} == {"upstream-model"}
    assert batch_upstream.chat_calls == 0
    assert done.output_file_id is not None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert [line["custom_id"] for line in output] == [f"q{n}" for n in range(6)]
    for line, text in zip(output, texts, strict=True):
        assert line["response"]["status_code"] == 200
        assert text[:20] in line["response"]["body"]["choices"][0]["message"]["content"]
    rows = sorted(
        (row for row in ledger_rows(gw, bg) if row["request_id"].startswith(batch_id)),
        key=lambda row: int(row["request_id"].rsplit("-", 1)[1]),
    )
    assert [row["status"] for row in rows] == [200] * 6
    # Priced at the batch price (half the ordinary one), and said so.
    assert [row["cost_usd"] for row in rows] == pytest.approx([batch_cost(text) for text in texts])
    assert all("Batch API at its batch price" in row["admission"] for row in rows)
    assert all(row["priority"] == "deferrable" and row["deployment"] == "big" for row in rows)
    assert all(row["reference_usd"] == pytest.approx(2 * row["cost_usd"]) for row in rows)
    assert done.model_extra is not None
    assert done.model_extra["gateway_cost_usd"] == pytest.approx(sum(batch_cost(text) for text in texts))


def test_a_line_the_upstream_refuses_is_kept_in_the_error_file(
    batch_upstream: FakeBatchUpstream, gateway: Callable[..., RunningGateway]
) -> None:
    gw = start(gateway, batch_upstream)
    client = gw.client()
    batch_id = submit(client, [chat_line("good", "A fine question?"), chat_line("bad", "A refused one?")])
    batch_upstream.fail_ids = {f"{batch_id}:2"}
    done = finished(client, batch_id)
    assert done.request_counts.completed == 1 and done.request_counts.failed == 1  # type: ignore[union-attr]
    assert done.error_file_id is not None
    (error,) = [orjson.loads(line) for line in client.files.content(done.error_file_id).content.splitlines()]
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
    assert "refuses" in error["response"]["body"]["error"]["message"]
    assert len(batch_upstream.created()) == 1  # a refusal is the line's answer: not sent again


def test_lines_an_expired_upstream_batch_left_unanswered_are_sent_again(
    batch_upstream: FakeBatchUpstream, gateway: Callable[..., RunningGateway]
) -> None:
    batch_upstream.expire_batches, batch_upstream.answer_first = 1, 1
    gw = start(gateway, batch_upstream)
    client = gw.client()
    batch_id = submit(client, [chat_line(f"q{n}", f"Question {n}?") for n in range(3)])
    deadline = time.monotonic() + 30
    done = finished(client, batch_id, timeout=60)
    assert time.monotonic() < deadline + 30
    assert done.status == "completed" and done.request_counts.completed == 3  # type: ignore[union-attr]
    first, second = batch_upstream.created()
    assert first.status == "expired" and len(first.lines) == 3
    # Only the two it left unanswered went again.
    assert second.status == "completed" and len(second.lines) == 2
    assert {line["custom_id"] for line in second.lines} == {line["custom_id"] for line in first.lines[1:]}


@pytest.mark.parametrize(
    ("endpoint", "body", "upstream_endpoint"),
    [
        ("/v1/embeddings", {"model": "auto", "input": "a sentence to embed"}, "/v1/embeddings"),
        ("/v1/responses", {"model": "auto", "input": "Say hello."}, "/v1/chat/completions"),
    ],
)
def test_embeddings_and_responses_lines_go_to_the_batch_api_too(
    batch_upstream: FakeBatchUpstream,
    gateway: Callable[..., RunningGateway],
    endpoint: str,
    body: dict[str, Any],
    upstream_endpoint: str,
) -> None:
    gw = gateway(
        {**spec(batch_upstream), "embeddings_route": "frontier"},
        upstream_batch_flush_seconds=0.2, upstream_batch_poll_seconds=0.1,
    )  # fmt: skip
    client = gw.client()
    line = {"custom_id": "one", "method": "POST", "url": endpoint, "body": body}
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(jsonl([line]))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    done = finished(client, batch.id)
    assert done.request_counts.completed == 1 and done.output_file_id is not None  # type: ignore[union-attr]
    (upstream_batch,) = batch_upstream.created()
    assert upstream_batch.endpoint == upstream_endpoint and batch_upstream.chat_calls == 0
    (output,) = [orjson.loads(raw) for raw in client.files.content(done.output_file_id).content.splitlines()]
    answer = output["response"]["body"]
    if endpoint == "/v1/embeddings":
        assert answer["object"] == "list" and len(answer["data"][0]["embedding"]) == 8
    else:  # the chat answer, rendered as the Responses API's
        assert answer["object"] == "response" and "Batch answer" in answer["output"][0]["content"][0]["text"]
