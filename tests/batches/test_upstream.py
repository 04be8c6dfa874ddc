"""The batch store's rows for lines sent on to an upstream's Batch API, SQLite and PostgreSQL alike: a
line is queued once however often it is asked for; a submission takes queued lines once; a submission
is ended once, every line answered (those the upstream left out with the error given); a held
submission is not due until its hold runs out; finalizing a batch drops its lines' rows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.batches.store import ThreadedBatchStore
from tests.batches.conftest import CHAT, START, Backend, Clock, new_batch

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_line_is_queued_once_and_taken_by_one_submission(backend: Backend) -> None:
    async def scenario(store: ThreadedBatchStore) -> None:
        assert await store.queue_upstream("b:1", "big", CHAT, BODY)
        assert not await store.queue_upstream("b:1", "big", CHAT, BODY)  # a line run again
        assert await store.queue_upstream("b:2", "big", CHAT, BODY)
        assert await store.queue_upstream("b:3", "other", CHAT, BODY)
        groups = await store.queued_upstream()
        assert [(group.deployment, group.count) for group in groups] == [("big", 2), ("other", 1)]
        taken = await store.open_submission("s1", "big", CHAT, 10, 60)
        assert [key for key, _ in taken] == ["b:1", "b:2"]
        assert await store.open_submission("s2", "big", CHAT, 10, 60) == []
        assert (await store.upstream_result("b:1")).state == "submitted"  # type: ignore[union-attr]
        assert await store.submission_lines("s1") == taken
        assert await store.due_submissions(60, 10) == []  # held by its creator

    asyncio.run(_with(backend, scenario))


def test_a_submission_ends_once_with_every_line_answered(backend: Backend) -> None:
    clock = Clock()

    async def scenario(store: ThreadedBatchStore) -> None:
        for n in (1, 2):
            await store.queue_upstream(f"b:{n}", "big", CHAT, BODY)
        await store.open_submission("s1", "big", CHAT, 10, 60)
        clock.now = START + 61  # its creator died: the hold ran out
        (due,) = await store.due_submissions(60, 10)
        assert (due.id, due.state, due.upstream_id) == ("s1", "creating", None)
        await store.mark_submitted("s1", "batch_up", 5)
        assert await store.due_submissions(60, 10) == []
        clock.now += 5
        (due,) = await store.due_submissions(60, 10)
        assert (due.state, due.upstream_id) == ("submitted", "batch_up")
        unanswered = (502, {"error": {"message": "left out"}})
        ended = await store.end_submission("s1", {"b:1": (200, {"ok": True})}, unanswered)
        assert sorted(ended) == ["b:1", "b:2"]
        assert await store.end_submission("s1", {}, unanswered) == []  # once
        first, second = await store.upstream_result("b:1"), await store.upstream_result("b:2")
        assert first is not None and (first.state, first.status, first.response) == (
            "answered",
            200,
            '{"ok":true}',
        )
        assert second is not None and (second.status, second.response) == (
            502,
            '{"error":{"message":"left out"}}',
        )
        await store.forget_upstream("b:2")  # failed: a retry queues it afresh
        assert await store.upstream_result("b:2") is None
        assert await store.queue_upstream("b:2", "big", CHAT, BODY)
        assert await store.upstream_counts() == {"answered": 1, "queued": 1, "open_submissions": 0}

    asyncio.run(_with(backend, scenario, clock=clock))


def test_finalizing_a_batch_drops_its_lines_upstream_rows(backend: Backend) -> None:
    async def scenario(store: ThreadedBatchStore) -> None:
        row = await new_batch(store, 1)
        await store.queue_upstream(f"{row.id}:1", "big", CHAT, BODY)
        await store.queue_upstream("another_batch:1", "big", CHAT, BODY)
        (line,) = await store.claim("w1", 1, 30)
        await store.finish_line("w1", row.id, 1, "done", {"custom_id": line.custom_id, "response": None}, 0.0)
        assert await store.finalize_ready() == [row.id]
        assert await store.upstream_result(f"{row.id}:1") is None
        assert await store.upstream_result("another_batch:1") is not None

    asyncio.run(_with(backend, scenario))


async def _with(
    backend: Backend, scenario: Callable[[ThreadedBatchStore], Awaitable[None]], **options: object
) -> None:
    store = backend.open(**options)
    try:
        await scenario(store)
    finally:
        await store.aclose()
