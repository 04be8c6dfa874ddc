"""`UpstreamBatches` against a fake OpenAI Batch API on loopback, on a real SQLite batch store: a
submission whose creator died after creating its upstream batch is found there by its metadata, not
created again; one that died before is created; lines wait parked and get their answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.batches.sqlite import SqliteBatchStore
from gateway.config import Deployment
from gateway.deferred.upstream_batches import METADATA_KEY, UpstreamBatches
from gateway.errors import GatewayError, UpstreamError
from gateway.fakes.batch_upstream import FakeBatchUpstream
from gateway.providers.openai_batches import OpenAIBatchApi
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.tokens import TokenCounter
from gateway.wire import ChatRequest, DeferredLine

CHAT = "/v1/chat/completions"
BODY = {"model": "upstream-model", "messages": [{"role": "user", "content": "What is two and two?"}]}


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, upstream: FakeBatchUpstream
) -> AsyncIterator[tuple[SqliteBatchStore, UpstreamBatches, OpenAIBatchApi]]:
    await upstream.start()
    store = SqliteBatchStore(tmp_path / "batches.sqlite")
    deployment = Deployment(
        name="big", provider="openai", model="upstream-model", api_base=upstream.base_url, batch_api=True
    )
    async with aiohttp.ClientSession() as session:
        api = OpenAIBatchApi(OpenAICompatProvider(deployment, session, {}, TokenCounter()), session)
        batches = UpstreamBatches(
            store, {"big": api}, {"big": deployment}, flush_seconds=0.05, poll_seconds=0.05, hold_seconds=0.2
        )
        task = asyncio.create_task(batches.run())
        try:
            yield store, batches, api
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.aclose()
            await upstream.stop()


def test_a_submission_already_created_upstream_is_found_not_sent_again(tmp_path: Path) -> None:
    upstream = FakeBatchUpstream()

    async def scenario() -> None:
        async with running(tmp_path, upstream) as (store, batches, api):
            # What a replica killed between creating the upstream batch and recording it leaves.
            await store.queue_upstream("b:1", "big", CHAT, BODY)
            (line,) = await store.open_submission("s-crashed", "big", CHAT, 10, 0.1)
            content = f'{{"custom_id":"b:1","method":"POST","url":"{CHAT}","body":{line[1]}}}\n'.encode()
            file_id = await api.upload("s.jsonl", content)
            await api.create(file_id, CHAT, {METADATA_KEY: "s-crashed"})
            request = ChatRequest(BODY, "r1", deferred=DeferredLine("b:1", lambda: None))
            completion = await asyncio.wait_for(batches.answer("big", request), 10)
            assert b"Batch answer" in completion.body and completion.usage is not None
            assert len(upstream.batches) == 1

    asyncio.run(scenario())


def test_a_submission_its_creator_never_sent_is_created_once(tmp_path: Path) -> None:
    upstream = FakeBatchUpstream()

    async def scenario() -> None:
        async with running(tmp_path, upstream) as (store, batches, _):
            for n in (1, 2):
                await store.queue_upstream(f"b:{n}", "big", CHAT, BODY)
            await store.open_submission("s-lost", "big", CHAT, 10, 0.1)  # killed before any upload
            parked: list[str] = []
            requests = [
                ChatRequest(
                    BODY, f"r{n}", deferred=DeferredLine(f"b:{n}", lambda n=n: parked.append(f"b:{n}"))
                )
                for n in (1, 2)
            ]
            answers = await asyncio.wait_for(
                asyncio.gather(*(batches.answer("big", request) for request in requests)), 10
            )
            assert all(b"Batch answer" in answer.body for answer in answers)
            assert sorted(parked) == ["b:1", "b:2"]
            (created,) = upstream.created()
            assert created.metadata == {METADATA_KEY: "s-lost"} and len(created.lines) == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [400, 502])
def test_an_upstream_error_for_a_line_is_raised_and_the_line_forgotten(tmp_path: Path, status: int) -> None:
    upstream = FakeBatchUpstream(
        fail_ids={"b:1"} if status == 400 else set(), expire_batches=int(status == 502)
    )

    async def scenario() -> None:
        async with running(tmp_path, upstream) as (store, batches, _):
            request = ChatRequest(BODY, "r1", deferred=DeferredLine("b:1", lambda: None))
            with pytest.raises(GatewayError) as raised:
                await asyncio.wait_for(batches.answer("big", request), 10)
            assert raised.value.status == status
            assert isinstance(raised.value, UpstreamError) and raised.value.retryable is (status == 502)
            assert await store.upstream_result("b:1") is None

    asyncio.run(scenario())
