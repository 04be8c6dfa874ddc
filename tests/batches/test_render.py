"""The objects the Batch API answers with: a batch and a file as OpenAI renders them (checked against
the openai SDK's own types, field by field), the tokens a batch's lines used, and a batch's life seen
through its rendering."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from openai.types import Batch, FileObject

from gateway.batches.render import render_batch, render_file, unfinished_output
from gateway.batches.rows import BatchRow, FileRow, Usage
from gateway.batches.store import ThreadedBatchStore
from gateway.batches.usage import line_usage
from tests.batches.conftest import CHAT, START, Backend, new_batch, output_of

AT = int(START)


def batch_row(**changes: Any) -> BatchRow:
    row = BatchRow(
        id="batch_0123456789abcdef01234567",
        tenant="alpha",
        endpoint=CHAT,
        model="small-m",
        input_file_id="file-0123456789abcdef01234567",
        completion_window="24h",
        status="completed",
        metadata={"project": "nightly"},
        errors=None,
        created_at=AT,
        in_progress_at=AT,
        finalizing_at=AT + 60,
        completed_at=AT + 60,
        failed_at=None,
        expired_at=None,
        cancelling_at=None,
        cancelled_at=None,
        expires_at=AT + 86400,
        output_file_id="file-aaaaaaaaaaaaaaaaaaaaaaaa",
        error_file_id=None,
        total=3,
        completed=2,
        failed=1,
        cost_usd=0.75,
        usage=Usage(input_tokens=30, cached_tokens=4, output_tokens=12, reasoning_tokens=2, total_tokens=42),
    )
    return replace(row, **changes)


def test_a_batch_renders_as_openai_does() -> None:
    rendered = render_batch(batch_row())
    assert rendered == {
        "id": "batch_0123456789abcdef01234567",
        "object": "batch",
        "endpoint": CHAT,
        "model": "small-m",
        "errors": None,
        "input_file_id": "file-0123456789abcdef01234567",
        "completion_window": "24h",
        "status": "completed",
        "output_file_id": "file-aaaaaaaaaaaaaaaaaaaaaaaa",
        "error_file_id": None,
        "created_at": AT,
        "in_progress_at": AT,
        "expires_at": AT + 86400,
        "finalizing_at": AT + 60,
        "completed_at": AT + 60,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 3, "completed": 2, "failed": 1},
        "usage": {
            "input_tokens": 30,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 2},
            "total_tokens": 42,
        },
        "metadata": {"project": "nightly"},
        "gateway_cost_usd": 0.75,  # the gateway's own: what its lines cost so far
    }
    # The SDK's type takes it whole (the gateway's field as an extra), and gives back what was rendered.
    assert Batch.model_validate(rendered).model_dump(mode="json") == rendered


def test_a_failed_batch_renders_its_errors_as_a_list_object() -> None:
    errors = [{"code": "invalid_json_line", "line": 2, "message": "line 2: not valid JSON", "param": None}]
    rendered = render_batch(
        batch_row(status="failed", errors=errors, failed_at=AT, metadata=None, model=None)
    )
    assert rendered["errors"] == {"object": "list", "data": errors}
    assert (rendered["metadata"], rendered["model"]) == (None, None)
    validated = Batch.model_validate(rendered)
    assert validated.errors is not None and validated.errors.data is not None
    assert validated.errors.data[0].line == 2


def test_a_file_renders_as_openai_does() -> None:
    row = FileRow(
        "file-0123456789abcdef01234567", "alpha", "batch_output", "batch_x_output.jsonl", 1234, AT, None
    )
    rendered = render_file(row)
    assert rendered == {
        "id": "file-0123456789abcdef01234567",
        "object": "file",
        "bytes": 1234,
        "created_at": AT,
        "expires_at": None,
        "filename": "batch_x_output.jsonl",
        "purpose": "batch_output",
        "status": "processed",
        "status_details": None,
    }
    assert FileObject.model_validate(rendered).model_dump(mode="json") == rendered


def test_a_request_that_never_ran_renders_as_an_error_line() -> None:
    line = unfinished_output("request-7", "expired")
    assert line["id"].startswith("batch_req_") and len(line["id"]) == len("batch_req_") + 24
    assert {key: value for key, value in line.items() if key != "id"} == {
        "custom_id": "request-7",
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "The request could not be run before the completion window ended.",
        },
    }


def test_the_tokens_of_each_endpoints_answers_are_read() -> None:
    chat = output_of(
        "a",
        prompt_tokens=10,
        completion_tokens=5,
        total_tokens=15,
    )
    chat["response"]["body"]["usage"].update(
        prompt_tokens_details={"cached_tokens": 3}, completion_tokens_details={"reasoning_tokens": 2}
    )
    assert line_usage(chat) == Usage(10, 3, 5, 2, 15)
    responses = output_of("b", input_tokens=7, output_tokens=4)
    responses["response"]["body"]["usage"].update(
        input_tokens_details={"cached_tokens": 1}, output_tokens_details={"reasoning_tokens": 0}
    )
    assert line_usage(responses) == Usage(7, 1, 4, 0, 11)  # no total: the sum
    assert line_usage(output_of("c", prompt_tokens=8, total_tokens=8)) == Usage(8, 0, 0, 0, 8)  # embeddings
    failed = {"id": "x", "custom_id": "d", "response": None, "error": {"code": "server_error"}}
    assert line_usage(failed) == Usage()
    assert (
        line_usage(output_of("e", prompt_tokens=True, completion_tokens=-3)) == Usage()
    )  # nonsense counts nothing


async def rendered(store: ThreadedBatchStore, batch_id: str) -> dict[str, Any]:
    found = await store.get_batch("alpha", batch_id)
    assert found is not None
    return render_batch(found)


def test_a_batchs_life_renders_through_the_sdk(backend: Backend) -> None:
    async def scenario() -> list[dict[str, Any]]:
        store = backend.open()
        row = await new_batch(store, 2)
        seen = [render_batch(row)]
        claimed = await store.claim("w1", 2, 30)
        await store.finish_line(
            "w1", row.id, 1, "done", output_of("request-1", prompt_tokens=3, completion_tokens=4), 0.5
        )
        seen.append(await rendered(store, row.id))
        await store.finish_line("w1", row.id, claimed[1].line_no, "failed", output_of("request-2", 500), 0.0)
        await store.finalize_ready(now=START + 10)
        seen.append(await rendered(store, row.id))
        return seen

    created, running, completed = (Batch.model_validate(seen) for seen in asyncio.run(scenario()))
    assert created.status == "in_progress" and created.request_counts is not None
    assert (created.request_counts.total, created.request_counts.completed) == (2, 0)
    assert running.request_counts is not None and running.request_counts.completed == 1
    assert running.usage is not None and (running.usage.input_tokens, running.usage.total_tokens) == (3, 7)
    assert completed.status == "completed" and completed.request_counts is not None
    assert (completed.request_counts.completed, completed.request_counts.failed) == (1, 1)
    assert completed.output_file_id and completed.error_file_id and completed.completed_at == AT + 10
