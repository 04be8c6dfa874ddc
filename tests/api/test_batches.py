"""The Batch API end to end with OpenAI's own client: upload, create, poll, read the output; lines go
through the policy (the cache answers repeats), are recorded in the ledger as deferrable, and a bad
input file makes a failed batch that says which line is wrong."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.identity.keys import KeyStore
from gateway.identity.keys_sqlite import SqliteKeys
from tests.conftest import RunningGateway, ledger_rows, openai_deployment


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def chat_line(custom_id: str, text: str) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {
            "big": openai_deployment(
                upstream,
                price={"input_per_mtok": 10, "output_per_mtok": 30},
                capacity={"max_concurrency": 2, "queue": 64},
            ),
            "embedder": openai_deployment(upstream, model="fake-embed"),
        },
        "routes": {"frontier": ["big"], "embed": ["embedder"]},
        "rules": [
            {
                "name": "cached",
                "when": {"signal": "size", "gte": 0},
                "route": "frontier",
                "cache": {"enabled": True},
            }
        ],
        "signals": {"size": {"kind": "size", "of": "prompt_tokens"}},
        "default_route": "frontier",
        "reference_route": "frontier",
        "embeddings_route": "embed",
    }


def test_a_batch_runs_through_the_policy_and_its_output_comes_back(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(spec(upstream))
    client = gw.client()
    lines = [chat_line(f"q{n}", f"Question number {n}?") for n in range(5)]
    lines.append(chat_line("again", "Question number 0?"))  # the same as q0: the cache answers
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"job": "nightly"},
    )  # fmt: skip
    assert batch.status == "in_progress" and batch.request_counts.total == 6  # type: ignore[union-attr]
    done = finished(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.completed == 6 and done.request_counts.failed == 0
    assert done.metadata == {"job": "nightly"} and done.error_file_id is None
    # What it cost so far, the gateway's own field: five answers from upstream, one from the cache.
    rows_cost = sum(row["cost_usd"] for row in ledger_rows(gw, bg) if row["request_id"].startswith(batch.id))
    assert done.model_extra is not None and done.model_extra["gateway_cost_usd"] == pytest.approx(rows_cost)
    assert rows_cost > 0
    assert done.output_file_id is not None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    for line in output:
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
    # Upstream once per distinct question: the repeat came from the cache.
    assert len(upstream.requests) == 5
    assert all(request.body.get("stream") is False for request in upstream.requests)
    rows = [row for row in ledger_rows(gw, bg) if row["request_id"].startswith(batch.id)]
    assert len(rows) == 6 and {row["priority"] for row in rows} == {"deferrable"}
    assert sorted(row["cache"] for row in rows) == ["exact", "miss", "miss", "miss", "miss", "miss"]
    assert all(row["status"] == 200 for row in rows)
    assert client.batches.list().data[0].id == batch.id


def test_a_bad_input_file_makes_a_failed_batch_naming_the_line(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    gw = gateway(spec(upstreams()))
    client = gw.client()
    content = jsonl([chat_line("a", "fine")]) + b'{"custom_id": "b", "method": "GET"}\n'
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert batch.errors.data[0].line == 2
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(content)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_000000000000000000000000")


def test_lines_the_upstream_refuses_go_to_the_error_file_and_embeddings_lines_run(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    gw = gateway(spec(upstreams()))
    client = gw.client()
    line = {"method": "POST", "url": "/v1/embeddings"}
    embed = [
        {"custom_id": "e1", **line, "body": {"model": "auto", "input": "hi"}},
        {"custom_id": "e2", **line, "body": {"model": "auto", "input": 5}},
    ]
    uploaded = client.files.create(file=("e.jsonl", io.BytesIO(jsonl(embed))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = finished(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.completed == 1 and done.request_counts.failed == 1
    assert done.output_file_id is not None and done.error_file_id is not None
    [good] = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert good["custom_id"] == "e1" and good["response"]["body"]["object"] == "list"
    [bad] = [orjson.loads(line) for line in client.files.content(done.error_file_id).content.splitlines()]
    assert bad["custom_id"] == "e2" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_a_batchs_lines_count_against_its_creators_key_budget(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    state = tmp_path / "keyed-state"
    store = KeyStore(SqliteKeys(state / "keys.sqlite"))
    key, secret = store.create("search", "client")
    store.close()
    # The key may spend about two answers' worth a day (each costs ~$0.0004 and reserves more), so
    # not all four lines fit; its team has no budget of its own.
    policy = {**spec(upstreams()), "budgets": {"keys": {key.id: {"daily_usd": 0.001}}}}
    gw = gateway(policy, admin_keys="sk-admin", state_dir=state, batch_concurrency=1)
    client = gw.client(api_key=secret)
    lines = [chat_line(f"q{n}", f"A long question, number {n}, asked once?") for n in range(4)]
    for line in lines:
        line["body"]["max_tokens"] = 10
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = finished(client, batch.id)
    assert done.request_counts.failed >= 1 and done.request_counts.completed >= 1  # type: ignore[union-attr]
    assert done.error_file_id is not None
    errors = [orjson.loads(line) for line in client.files.content(done.error_file_id).content.splitlines()]
    assert {error["response"]["body"]["error"]["code"] for error in errors} == {"budget_exceeded"}
    rows = [row for row in ledger_rows(gw, bg) if row["request_id"].startswith(batch.id)]
    assert {row["key_id"] for row in rows} == {key.id} and {row["team"] for row in rows} == {"search"}
