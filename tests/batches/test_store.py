"""The batch store, SQLite and PostgreSQL alike: files and batches come back only to their tenant; a
batch and its lines are made together; claims, leases and finishing lines count each line once, also
when a worker dies; finalization writes the output and error files; cancelling; expiry; listing; the
migrations; a closed or unreachable store."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from gateway.batches import store as store_module
from gateway.batches.backends import open_batch_store
from gateway.batches.lines import BatchLine, parse_batch_input
from gateway.batches.postgres import PostgresBatchStore
from gateway.batches.rows import BatchRow, ClaimedLine, FinishedState, Usage
from gateway.batches.sqlite import SqliteBatchStore
from gateway.batches.store import BatchStoreUnavailable, ThreadedBatchStore
from tests.batches.conftest import (
    CHAT,
    START,
    Backend,
    Clock,
    input_file,
    new_batch,
    output_of,
    sqlite_query,
)
from tests.conftest import free_port

DAY = 24 * 3600


async def finish_all(store: ThreadedBatchStore, claimed: list[ClaimedLine], worker: str = "w1") -> None:
    for line in claimed:
        assert await store.finish_line(
            worker, line.batch_id, line.line_no, "done", output_of(line.custom_id), 0.5
        )


# Files.


def test_a_file_comes_back_whole_only_to_its_tenant(backend: Backend) -> None:
    content = input_file(3) + b"\x00\xff binary tail"

    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await store.create_file("alpha", "batch", "input.jsonl", content)
        return (
            row,
            await store.get_file("alpha", row.id),
            await store.file_content("alpha", row.id),
            await store.get_file("beta", row.id),
            await store.file_content("beta", row.id),
            await store.delete_file("beta", row.id),
            await store.get_file("", row.id),
        )

    row, found, read, betas, betas_content, betas_delete, anonymous = asyncio.run(scenario())
    assert row.id.startswith("file-") and len(row.id) == len("file-") + 24
    int(row.id.removeprefix("file-"), 16)
    assert (row.tenant, row.purpose, row.filename, row.bytes) == (
        "alpha",
        "batch",
        "input.jsonl",
        len(content),
    )
    assert (row.created_at, row.expires_at) == (int(START), None)
    assert found == row and read == content
    assert (betas, betas_content, betas_delete, anonymous) == (None, None, False, None)


def test_a_deleted_file_is_gone(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await store.create_file("alpha", "batch", "input.jsonl", b"{}\n")
        first = await store.delete_file("alpha", row.id)
        again = await store.delete_file("alpha", row.id)
        return first, again, await store.get_file("alpha", row.id), await store.file_content("alpha", row.id)

    assert asyncio.run(scenario()) == (True, False, None, None)


def test_a_file_must_have_a_batch_purpose_and_at_most_200_mb(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_FILE_BYTES", 10)

    async def scenario() -> None:
        store = backend.open()
        with pytest.raises(ValueError, match="purpose"):
            await store.create_file("alpha", "fine-tune", "x.jsonl", b"{}")
        with pytest.raises(ValueError, match="at most 10 bytes"):
            await store.create_file("alpha", "batch", "x.jsonl", b"x" * 11)
        await store.create_file("alpha", "batch", "x.jsonl", b"x" * 10)

    asyncio.run(scenario())
    assert backend.query("SELECT bytes FROM batch_files") == [(10,)]


# Creating batches.


def test_a_batch_and_all_its_lines_are_stored_in_progress(backend: Backend) -> None:
    async def scenario() -> tuple[BatchRow, BatchRow | None, BatchRow | None]:
        store = backend.open()
        row = await new_batch(store, 3, metadata={"project": "nightly"})
        return row, await store.get_batch("alpha", row.id), await store.get_batch("beta", row.id)

    row, found, betas = asyncio.run(scenario())
    assert row.id.startswith("batch_") and len(row.id) == len("batch_") + 24
    assert found == row and betas is None
    assert (row.status, row.endpoint, row.model, row.completion_window) == (
        "in_progress",
        CHAT,
        "small-m",
        "24h",
    )
    assert (row.created_at, row.in_progress_at, row.expires_at) == (int(START), int(START), int(START) + DAY)
    assert (row.total, row.completed, row.failed, row.cost_usd) == (3, 0, 0, 0.0)
    assert row.metadata == {"project": "nightly"} and row.errors is None
    assert backend.lines(row.id) == [
        (1, "pending", None, 0),
        (2, "pending", None, 0),
        (3, "pending", None, 0),
    ]
    stored = backend.query("SELECT custom_id, method, url, body FROM batch_lines WHERE line_no = 2")
    assert stored[0][:3] == ("request-2", "POST", CHAT)
    assert orjson.loads(stored[0][3])["messages"][0]["content"] == "Question 2, 世界"


def test_a_batch_needs_the_tenants_own_batch_file(backend: Backend) -> None:
    content = input_file(2)
    lines = parse_batch_input(content, CHAT)

    async def scenario() -> None:
        store = backend.open()
        alphas = await store.create_file("alpha", "batch", "input.jsonl", content)
        output = await store.create_file("beta", "batch_output", "out.jsonl", content)
        with pytest.raises(ValueError, match="no input file"):
            await store.create_batch("beta", alphas.id, CHAT, "24h", None, lines)
        with pytest.raises(ValueError, match="no input file"):
            await store.create_batch("beta", output.id, CHAT, "24h", None, lines)
        with pytest.raises(ValueError, match="no input file"):
            await store.create_batch("beta", "file-missing", CHAT, "24h", None, lines)

    asyncio.run(scenario())
    assert backend.query("SELECT COUNT(*) FROM batches") == [(0,)]
    assert backend.query("SELECT COUNT(*) FROM batch_lines") == [(0,)]


@pytest.mark.parametrize(
    ("endpoint", "window", "metadata", "message"),
    [
        ("/v1/images/generations", "24h", None, "endpoint must be one of"),
        (CHAT, "48h", None, "completion_window must be one of 24h"),
        (CHAT, "24h", {f"k{n}": "v" for n in range(17)}, "at most 16 pairs"),
        (CHAT, "24h", {"k" * 65: "v"}, "longer than 64"),
        (CHAT, "24h", {"k": "v" * 513}, "longer than 512"),
        (CHAT, "24h", {"k": 1}, "strings"),
    ],
)
def test_a_batch_openai_would_refuse_is_refused(
    backend: Backend, endpoint: str, window: str, metadata: Any, message: str
) -> None:
    async def scenario() -> None:
        store = backend.open()
        uploaded = await store.create_file("alpha", "batch", "input.jsonl", input_file(1))
        line = BatchLine(1, "a", "POST", endpoint, {})
        with pytest.raises(ValueError, match=message):
            await store.create_batch("alpha", uploaded.id, endpoint, window, metadata, [line])

    asyncio.run(scenario())


def test_a_batch_without_lines_or_with_a_line_for_another_url_is_refused(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        uploaded = await store.create_file("alpha", "batch", "input.jsonl", input_file(1))
        with pytest.raises(ValueError, match="at least one line"):
            await store.create_batch("alpha", uploaded.id, CHAT, "24h", None, [])
        wrong = BatchLine(7, "a", "POST", "/v1/embeddings", {})
        with pytest.raises(ValueError, match="line 7"):
            await store.create_batch("alpha", uploaded.id, CHAT, "24h", None, [wrong])

    asyncio.run(scenario())


def test_a_refused_input_file_makes_a_failed_batch_with_its_errors(backend: Backend) -> None:
    errors = [{"code": "invalid_json_line", "line": 2, "message": "line 2: not valid JSON", "param": None}]

    async def scenario() -> tuple[BatchRow, BatchRow | None]:
        store = backend.open()
        uploaded = await store.create_file("alpha", "batch", "input.jsonl", b"{}\nnope\n")
        row = await store.create_failed_batch("alpha", uploaded.id, CHAT, "24h", None, errors)
        return row, await store.get_batch("alpha", row.id)

    row, found = asyncio.run(scenario())
    assert found == row
    assert (row.status, row.failed_at, row.in_progress_at, row.total) == ("failed", int(START), None, 0)
    assert row.errors == errors
    assert backend.query("SELECT COUNT(*) FROM batch_lines") == [(0,)]


# Claiming and finishing lines.


def test_claims_take_pending_lines_oldest_batch_first_and_each_once(backend: Backend) -> None:
    clock = Clock()

    async def scenario() -> tuple[Any, ...]:
        store = backend.open(clock=clock)
        older = await new_batch(store, 3, tenant="alpha")
        clock.now += 1
        newer = await new_batch(store, 2, tenant="beta")
        first = await store.claim("w1", 4, 30)
        second = await store.claim("w2", 4, 30)
        third = await store.claim("w3", 4, 30)
        return older, newer, first, second, third

    older, newer, first, second, third = asyncio.run(scenario())
    assert [line.key for line in first] == [(older.id, 1), (older.id, 2), (older.id, 3), (newer.id, 1)]
    assert [line.key for line in second] == [(newer.id, 2)]
    assert third == []
    line = first[0]
    assert (line.tenant, line.custom_id, line.method, line.url, line.attempts) == (
        "alpha",
        "request-1",
        "POST",
        CHAT,
        1,
    )
    assert line.body["messages"][0]["content"] == "Question 1, 世界"
    assert line.lease_until == START + 1 + 30
    assert second[0].tenant == "beta"
    assert backend.lines(older.id) == [
        (1, "running", "w1", 1),
        (2, "running", "w1", 1),
        (3, "running", "w1", 1),
    ]


def test_finishing_a_line_counts_it_once_with_its_cost_and_tokens(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 3)
        claimed = await store.claim("w1", 3, 30)
        results = [
            await store.finish_line(
                "w1", row.id, 1, "done", output_of("request-1", prompt_tokens=10, completion_tokens=5), 0.25
            ),
            await store.finish_line("w1", row.id, 1, "done", output_of("request-1"), 0.25),  # again
            await store.finish_line("w2", row.id, 2, "done", output_of("request-2"), 0.25),  # not w2's
            await store.finish_line(
                "w1",
                row.id,
                2,
                "failed",
                orjson.dumps(output_of("request-2", status_code=500, prompt_tokens=3, total_tokens=3)),
                0.125,
            ),
            await store.finish_line("w1", row.id, 9, "done", output_of("request-9"), 1.0),  # no such line
            await store.finish_line("w1", "batch_missing", 1, "done", output_of("x"), 1.0),
        ]
        return row, claimed, results, await store.get_batch("alpha", row.id)

    row, claimed, results, found = asyncio.run(scenario())
    assert len(claimed) == 3
    assert results == [True, False, False, True, False, False]
    assert found is not None
    assert (found.status, found.completed, found.failed, found.cost_usd) == ("in_progress", 1, 1, 0.375)
    assert found.usage == Usage(input_tokens=13, output_tokens=5, total_tokens=18)
    assert backend.lines(row.id) == [(1, "done", "w1", 1), (2, "failed", "w1", 1), (3, "running", "w1", 1)]


def test_a_finished_line_must_be_done_or_failed_with_a_json_object(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        row = await new_batch(store, 1)
        await store.claim("w1", 1, 30)
        with pytest.raises(ValueError, match="'done' or 'failed'"):
            await store.finish_line("w1", row.id, 1, "cancelled", {}, 0.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="JSON object"):
            await store.finish_line("w1", row.id, 1, "done", "[1, 2]", 0.0)
        with pytest.raises(ValueError, match="must be JSON"):
            await store.finish_line("w1", row.id, 1, "done", b"{nope", 0.0)

    asyncio.run(scenario())
    assert backend.query("SELECT state FROM batch_lines") == [("running",)]


def test_a_dead_workers_line_is_claimed_again_and_its_late_finish_counts_nothing(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 2)
        dead = await store.claim("dead", 1, 30, now=START)
        too_early = await store.claim("heir", 5, 30, now=START + 29.9)  # takes line 2 only
        heirs = await store.claim("heir", 5, 30, now=START + 30)  # the lease ran out
        stale = await store.finish_line("dead", row.id, 1, "done", output_of("request-1"), 1.0)
        held = await store.extend_lease("dead", [(row.id, 1)], 30, now=START + 31)
        mine = await store.finish_line("heir", row.id, 1, "done", output_of("request-1"), 0.5)
        return row, dead, too_early, heirs, stale, held, mine, await store.get_batch("alpha", row.id)

    row, dead, too_early, heirs, stale, held, mine, found = asyncio.run(scenario())
    assert [line.key for line in dead] == [(row.id, 1)]
    assert [line.key for line in too_early] == [(row.id, 2)]
    assert [(line.key, line.attempts) for line in heirs] == [((row.id, 1), 2)]
    assert (stale, held, mine) == (False, [], True)
    assert found is not None and (found.completed, found.failed, found.cost_usd) == (1, 0, 0.5)


def test_an_extended_lease_keeps_a_line_from_other_workers(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 3)
        await store.claim("w1", 2, 30, now=START)
        held = await store.extend_lease("w1", [(row.id, 2), (row.id, 1), (row.id, 3)], 30, now=START + 20)
        others = await store.claim("w2", 5, 30, now=START + 40)
        return row, held, others

    row, held, others = asyncio.run(scenario())
    assert held == [(row.id, 1), (row.id, 2)]  # line 3 was never w1's
    assert [line.key for line in others] == [(row.id, 3)]
    assert backend.query("SELECT line_no, lease_until FROM batch_lines WHERE claimed_by = 'w1'") == [
        (1, START + 50),
        (2, START + 50),
    ]


def test_a_line_whose_every_attempt_was_lost_fails_and_its_batch_completes(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open(max_attempts=2)
        row = await new_batch(store, 2)
        await store.claim("w1", 2, 10, now=START)
        await store.finish_line("w1", row.id, 2, "done", output_of("request-2"), 0.5)
        again = await store.claim("w2", 2, 10, now=START + 10)
        exhausted = await store.claim("w3", 2, 10, now=START + 20)
        early = await store.finalize_ready(now=START + 19)
        finalized = await store.finalize_ready(now=START + 20)
        found = await store.get_batch("alpha", row.id)
        assert found is not None and found.error_file_id is not None
        return (
            row,
            again,
            exhausted,
            early,
            finalized,
            found,
            await store.file_content("alpha", found.error_file_id),
        )

    row, again, exhausted, early, finalized, found, errors = asyncio.run(scenario())
    assert [(line.key, line.attempts) for line in again] == [((row.id, 1), 2)]
    assert (exhausted, early, finalized) == ([], [], [row.id])
    assert (found.status, found.completed, found.failed) == ("completed", 1, 1)
    (error,) = [orjson.loads(line) for line in errors.splitlines()]
    assert error["custom_id"] == "request-1" and error["response"] is None
    assert error["error"] == {
        "code": "server_error",
        "message": "The request was started 2 times and never finished.",
    }


# Finalizing.


def test_a_batch_whose_lines_all_finished_is_completed_with_its_output_and_error_files(
    backend: Backend,
) -> None:
    clock = Clock()

    async def scenario() -> tuple[Any, ...]:
        store = backend.open(clock=clock)
        row = await new_batch(store, 4)
        claimed = await store.claim("w1", 4, 30)
        # Finished out of order: the files keep the input's order.
        for line in reversed(claimed):
            state: FinishedState = "failed" if line.line_no == 3 else "done"
            status = 500 if state == "failed" else 200
            await store.finish_line(
                "w1", row.id, line.line_no, state, output_of(line.custom_id, status), 0.25
            )
        clock.now = START + 60
        finalized = await store.finalize_ready()
        again = await store.finalize_ready()
        found = await store.get_batch("alpha", row.id)
        assert found is not None and found.output_file_id and found.error_file_id
        files = [
            await store.get_file("alpha", found.output_file_id),
            await store.get_file("alpha", found.error_file_id),
        ]
        contents = [
            await store.file_content("alpha", found.output_file_id),
            await store.file_content("alpha", found.error_file_id),
        ]
        betas = await store.file_content("beta", found.output_file_id)
        late = await store.finish_line("w1", row.id, 1, "done", output_of("request-1"), 1.0)
        return row, finalized, again, found, files, contents, betas, late

    row, finalized, again, found, files, contents, betas, late = asyncio.run(scenario())
    assert (finalized, again) == ([row.id], [])
    assert (found.status, found.completed, found.failed, found.cost_usd) == ("completed", 3, 1, 1.0)
    assert (found.finalizing_at, found.completed_at) == (int(START) + 60, int(START) + 60)
    assert (found.cancelled_at, found.expired_at) == (None, None)
    output, error = contents
    assert output == b"".join(orjson.dumps(output_of(f"request-{n}")) + b"\n" for n in (1, 2, 4))
    assert error == orjson.dumps(output_of("request-3", 500)) + b"\n"
    output_file, error_file = files
    assert output_file is not None and error_file is not None
    assert (output_file.purpose, output_file.filename, output_file.bytes, output_file.created_at) == (
        "batch_output",
        f"{row.id}_output.jsonl",
        len(output),
        int(START) + 60,
    )
    assert (error_file.filename, error_file.bytes) == (f"{row.id}_error.jsonl", len(error))
    assert betas is None and late is False
    assert backend.lines(row.id) == []  # its results are in its files


def test_no_error_file_when_no_line_failed(backend: Backend) -> None:
    async def scenario() -> BatchRow | None:
        store = backend.open()
        row = await new_batch(store, 2)
        await finish_all(store, await store.claim("w1", 2, 30))
        assert await store.finalize_ready() == [row.id]
        return await store.get_batch("alpha", row.id)

    found = asyncio.run(scenario())
    assert found is not None and found.output_file_id is not None and found.error_file_id is None
    assert backend.query("SELECT COUNT(*) FROM batch_files WHERE purpose = 'batch_output'") == [(1,)]


def test_a_batch_with_a_line_not_finished_is_not_finalized(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 2)
        await finish_all(store, await store.claim("w1", 1, 30))
        pending = await store.finalize_ready()
        await store.claim("w1", 1, 30)
        running = await store.finalize_ready()
        found = await store.get_batch("alpha", row.id)
        return pending, running, found.status if found else None

    assert asyncio.run(scenario()) == ([], [], "in_progress")


# Cancelling.


def test_a_cancelled_batch_lets_running_lines_finish_then_is_cancelled(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 4)
        claimed = await store.claim("w1", 2, 30, now=START)
        await store.finish_line("w1", row.id, 1, "done", output_of("request-1"), 0.5)
        cancelling = await store.cancel_batch("alpha", row.id, now=START + 5)
        nothing = await store.claim("w2", 5, 30, now=START + 6)
        waiting = await store.finalize_ready(now=START + 7)  # line 2 is still running
        finished = await store.finish_line("w1", row.id, 2, "done", output_of("request-2"), 0.5)
        finalized = await store.finalize_ready(now=START + 8)
        found = await store.get_batch("alpha", row.id)
        assert found is not None and found.output_file_id and found.error_file_id
        output = await store.file_content("alpha", found.output_file_id)
        error = await store.file_content("alpha", found.error_file_id)
        again = await store.cancel_batch("alpha", row.id, now=START + 9)
        return row, claimed, cancelling, nothing, waiting, finished, finalized, found, output, error, again

    row, claimed, cancelling, nothing, waiting, finished, finalized, found, output, error, again = (
        asyncio.run(scenario())
    )
    assert len(claimed) == 2
    assert cancelling is not None
    assert (cancelling.status, cancelling.cancelling_at, cancelling.completed) == (
        "cancelling",
        int(START) + 5,
        1,
    )
    assert (nothing, waiting, finished, finalized) == ([], [], True, [row.id])
    assert (found.status, found.cancelled_at, found.finalizing_at) == (
        "cancelled",
        int(START) + 8,
        int(START) + 8,
    )
    assert (found.completed, found.failed, found.total) == (2, 0, 4)
    assert output == b"".join(orjson.dumps(output_of(f"request-{n}")) + b"\n" for n in (1, 2))
    errors = [orjson.loads(line) for line in error.splitlines()]
    assert [entry["custom_id"] for entry in errors] == ["request-3", "request-4"]
    assert all(entry["id"].startswith("batch_req_") and entry["response"] is None for entry in errors)
    assert errors[0]["error"]["code"] == "batch_cancelled"
    assert again == found  # cancelling a finished batch changes nothing


def test_a_cancelling_batch_whose_worker_died_is_cancelled_when_the_lease_runs_out(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 1)
        await store.claim("dead", 1, 30, now=START)
        await store.cancel_batch("alpha", row.id, now=START + 1)
        before = await store.finalize_ready(now=START + 29)
        after = await store.finalize_ready(now=START + 30)
        late = await store.finish_line("dead", row.id, 1, "done", output_of("request-1"), 1.0)
        return row, before, after, late, await store.get_batch("alpha", row.id)

    row, before, after, late, found = asyncio.run(scenario())
    assert (before, after, late) == ([], [row.id], False)
    assert found is not None
    assert (found.status, found.completed, found.output_file_id) == ("cancelled", 0, None)
    assert found.error_file_id is not None


def test_only_the_tenant_cancels_its_batch(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 1)
        return await store.cancel_batch("beta", row.id), await store.get_batch("alpha", row.id)

    betas, found = asyncio.run(scenario())
    assert betas is None and found is not None and found.status == "in_progress"


# Expiry.


def test_a_batch_expires_24_hours_after_its_creation_with_what_was_done(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        row = await new_batch(store, 4)
        await store.claim("w1", 3, 3 * DAY, now=START)
        await store.finish_line("w1", row.id, 1, "done", output_of("request-1"), 0.5)
        await store.finish_line("w1", row.id, 2, "failed", output_of("request-2", 400), 0.0)
        before = await store.finalize_ready(now=START + DAY - 1)
        expired = await store.finalize_ready(now=START + DAY)
        late = await store.finish_line("w1", row.id, 3, "done", output_of("request-3"), 0.5)
        found = await store.get_batch("alpha", row.id)
        assert found is not None and found.output_file_id and found.error_file_id
        output = await store.file_content("alpha", found.output_file_id)
        error = await store.file_content("alpha", found.error_file_id)
        return row, before, expired, late, found, output, error

    row, before, expired, late, found, output, error = asyncio.run(scenario())
    assert (before, expired, late) == ([], [row.id], False)
    assert (found.status, found.expired_at, found.completed_at) == ("expired", int(START) + DAY, None)
    assert (found.completed, found.failed, found.cost_usd) == (1, 1, 0.5)
    assert output == orjson.dumps(output_of("request-1")) + b"\n"
    errors = [orjson.loads(line) for line in error.splitlines()]
    assert errors[0] == output_of("request-2", 400)
    assert [(entry["custom_id"], entry["error"]["code"]) for entry in errors[1:]] == [
        ("request-3", "batch_expired"),
        ("request-4", "batch_expired"),
    ]


def test_a_batch_all_done_when_it_expires_is_completed(backend: Backend) -> None:
    async def scenario() -> BatchRow | None:
        store = backend.open()
        row = await new_batch(store, 1)
        await finish_all(store, await store.claim("w1", 1, 30))
        await store.finalize_ready(now=START + 2 * DAY)
        return await store.get_batch("alpha", row.id)

    found = asyncio.run(scenario())
    assert found is not None and found.status == "completed" and found.expired_at is None


# Listing.


def test_batches_are_listed_newest_first_a_page_at_a_time_only_to_their_tenant(backend: Backend) -> None:
    async def scenario() -> tuple[Any, ...]:
        store = backend.open()
        made = [await new_batch(store, 1) for _ in range(5)]  # all in the same second
        await new_batch(store, 1, tenant="beta")
        first = await store.list_batches("alpha", limit=2)
        second = await store.list_batches("alpha", after=first[-1].id, limit=2)
        third = await store.list_batches("alpha", after=second[-1].id, limit=2)
        return (
            made,
            first,
            second,
            third,
            await store.list_batches("alpha", after=third[-1].id),
            await store.list_batches("alpha", after="batch_unknown"),
            await store.list_batches("beta", after=made[2].id),
            await store.list_batches("gamma"),
        )

    made, first, second, third, past_the_end, unknown, betas_with_alphas_cursor, gammas = asyncio.run(
        scenario()
    )
    newest_first = [row.id for row in reversed(made)]
    assert [row.id for row in first + second + third] == newest_first
    assert (past_the_end, unknown, betas_with_alphas_cursor, gammas) == ([], [], [], [])


# Concurrency.


WORKERS = 4


@pytest.mark.parametrize("lines_are", ["pending", "leased_by_a_dead_worker"])
def test_workers_claiming_together_never_get_the_same_line(backend: Backend, lines_are: str) -> None:
    """Pending lines, or lines a dead worker held (their leases run out): each is claimed by one of the
    workers (each on a connection of its own, as on other replicas) and finished once."""
    now = START + 100

    async def setup() -> BatchRow:
        store = backend.open()
        try:
            row = await new_batch(store, 120)
            if lines_are != "pending":
                assert len(await store.claim("dead", 120, 10, now=START)) == 120
            return row
        finally:
            await store.aclose()

    row = asyncio.run(setup())
    claimed: dict[int, list[tuple[str, int]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def worker(n: int) -> None:
        async def scenario() -> list[tuple[str, int]]:
            store = backend.open_store()
            mine: list[tuple[str, int]] = []
            try:
                while lines := await store.claim(f"w{n}", 3, 60, now=now):
                    mine += [line.key for line in lines]
                    for line in lines:
                        await asyncio.sleep(0.002)  # running it (SQLite's busy waiters need a gap to get in)
                        done = await store.finish_line(
                            f"w{n}",
                            line.batch_id,
                            line.line_no,
                            "done",
                            output_of(line.custom_id),
                            0.25,
                            now=now,
                        )
                        assert done
            finally:
                await store.aclose()
            return mine

        try:
            start.wait(timeout=10)
            claimed[n] = asyncio.run(scenario())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    every = [key for keys in claimed.values() for key in keys]
    assert sorted(every) == [(row.id, n) for n in range(1, 121)]  # each line once, none missing
    assert sum(1 for keys in claimed.values() if keys) > 1  # they did work together
    assert backend.query("SELECT completed, failed, cost_usd FROM batches") == [(120, 0, 30.0)]


def test_a_postgresql_claim_skips_a_line_another_transaction_holds_without_waiting(postgres_url: str) -> None:
    store = PostgresBatchStore(postgres_url, clock=Clock())

    async def create() -> BatchRow:
        return await new_batch(store, 3)

    async def claim() -> list[ClaimedLine]:
        async with asyncio.timeout(1.5):  # far below the statement timeout: no waiting for the lock
            return await store.claim("w1", 5, 30)

    try:
        row = asyncio.run(create())
        with psycopg.connect(postgres_url) as holder:  # a transaction, open until the block ends
            holder.execute("SELECT 1 FROM batch_lines WHERE line_no = 2 FOR UPDATE")
            claimed = asyncio.run(claim())
        assert [line.key for line in claimed] == [(row.id, 1), (row.id, 3)]
    finally:
        asyncio.run(store.aclose())


# The store itself.


def test_migrations_are_applied_once(backend: Backend) -> None:
    async def open_and_read() -> int:
        store = backend.open()
        version = await store.schema_version()
        await store.aclose()
        return version

    assert asyncio.run(open_and_read()) == 3
    assert asyncio.run(open_and_read()) == 3
    assert [row[:2] for row in backend.query("SELECT version, description FROM batch_migrations")] == [
        (1, "the batch files, batches and batch lines tables"),
        (2, "lines sent on to upstream Batch APIs, and their submissions"),
        (3, "who created each batch: its team and key"),
    ]


def test_a_store_opened_again_finds_what_an_earlier_one_stored(backend: Backend) -> None:
    async def first() -> BatchRow:
        store = backend.open()
        row = await new_batch(store, 2)
        await store.claim("w1", 1, 30)
        await store.aclose()
        return row

    async def second(batch_id: str) -> tuple[Any, ...]:
        store = backend.open()
        return await store.get_batch("alpha", batch_id), await store.claim("w2", 5, 30)

    row = asyncio.run(first())
    found, claimed = asyncio.run(second(row.id))
    assert found == row
    assert [line.key for line in claimed] == [(row.id, 2)]


def test_a_closed_store_refuses_calls(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await store.aclose()
        await store.aclose()  # twice is fine
        with pytest.raises(BatchStoreUnavailable, match="closed"):
            await store.get_batch("alpha", "batch_x")

    asyncio.run(scenario())


def test_an_unreachable_postgresql_fails_calls_in_seconds() -> None:
    store = PostgresBatchStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")

    async def scenario() -> None:
        try:
            with pytest.raises(BatchStoreUnavailable, match="PostgreSQL"):
                await store.claim("w1", 1, 30)
            assert store.status()["ok"] is False
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_sqlite_keeps_its_file_in_wal_mode_synchronous_full(tmp_path: Path) -> None:
    store = SqliteBatchStore(tmp_path / "state" / "batches.sqlite")
    try:
        # A connection's own setting: asked on the store's connection. 2 is FULL.
        connection = store._database._db  # type: ignore[attr-defined]
        assert connection.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        asyncio.run(store.aclose())
    assert sqlite_query(tmp_path / "state" / "batches.sqlite")("PRAGMA journal_mode") == [("wal",)]


def test_the_factory_picks_sqlite_in_the_state_dir_or_postgresql(tmp_path: Path) -> None:
    for url in (None, "sqlite:///elsewhere/ledger.sqlite"):
        store = open_batch_store(tmp_path, url)
        assert isinstance(store, SqliteBatchStore) and store.path == tmp_path / "batches.sqlite"
        asyncio.run(store.aclose())
    store = open_batch_store(tmp_path, "postgresql://postgres@127.0.0.1:1/none")
    assert isinstance(store, PostgresBatchStore)
    asyncio.run(store.aclose())
    with pytest.raises(ValueError, match="GATEWAY_DATABASE_URL"):
        open_batch_store(tmp_path, "mysql://x")
