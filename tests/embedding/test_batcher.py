"""The embedder's micro-batcher against the real int8 model (built by `make embedder` before pytest):
results identical to solo calls, queued inputs batched, identical ones computed once, errors to every
caller, a bounded queue, a clean close; the model never runs on the event loop.

A gate (a threading.Event in front of the real model) holds the worker on its first input, so that what
arrives meanwhile is known to queue behind it: no test here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from gateway.embedding.batcher import BatcherClosed, EmbeddingBatcher, ModelBusy, Vector
from gateway.embedding.embedder import Embedder, EmbedderMissing
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.policy.signals import LazyEmbedder
from tests.conftest import RunningGateway, openai_deployment
from tests.embedding.test_embedder import MODEL

TEXTS = (
    "How do I reset my password?",
    "Write a haiku about autumn.",
    "ok",
    "",
    "Explain quicksort, its average and worst case, and when you would pick mergesort instead. " * 12,
    "Translate 'thank you very much' into German, French, Spanish and Italian, with pronunciation.",
    "Fix this Python error: TypeError: 'NoneType' object is not subscriptable in line 12 of main.py",
    "Summarise the main causes of the French Revolution in three bullet points for a ten year old.",
)


@pytest.fixture(scope="module")
def solo() -> Iterator[Embedder]:
    try:
        yield Embedder(MODEL, max_tokens=128)
    except EmbedderMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def lazy() -> LazyEmbedder:
    return LazyEmbedder(MODEL)


class Gate:
    """The real model, holding its first input until `open()`; records the threads it ran on."""

    def __init__(self, model: Callable[[str], Vector]) -> None:
        self._model = model
        self._open = threading.Event()
        self.entered = threading.Event()
        self.threads: set[int] = set()
        self.seen: list[str] = []

    def open(self) -> None:
        self._open.set()

    def __call__(self, text: str) -> Vector:
        self.threads.add(threading.get_ident())
        self.seen.append(text)
        self.entered.set()
        self._open.wait(timeout=30)
        return self._model(text)


async def held(gate: Gate) -> None:
    """Until the worker is inside the gate (a thread: waited for off the loop)."""
    assert await asyncio.to_thread(gate.entered.wait, 30)


def test_results_are_bit_for_bit_the_solo_vectors(solo: Embedder, lazy: LazyEmbedder) -> None:
    async def scenario() -> list[Vector]:
        batcher = EmbeddingBatcher(lazy.embed_one)
        try:
            return list(await asyncio.gather(*(batcher.embed(text) for text in TEXTS)))
        finally:
            await batcher.aclose()

    vectors = asyncio.run(scenario())
    for text, vector in zip(TEXTS, vectors, strict=True):
        expected = solo.embed_one(text)
        assert vector.dtype == np.float32 and vector.shape == (384,)
        assert np.array_equal(vector, expected), text[:40]


def test_inputs_queued_while_the_worker_is_busy_run_as_one_batch_off_the_loop(lazy: LazyEmbedder) -> None:
    gate = Gate(lazy.embed_one)

    async def scenario() -> tuple[EmbeddingBatcher, int]:
        batcher = EmbeddingBatcher(gate, recent=0)
        try:
            first = asyncio.ensure_future(batcher.embed(TEXTS[0]))
            await held(gate)
            rest = [asyncio.ensure_future(batcher.embed(text)) for text in TEXTS[1:]]
            await asyncio.sleep(0)  # every one is queued now
            assert batcher.waiting == len(TEXTS)
            gate.open()
            await asyncio.gather(first, *rest)
            return batcher, threading.get_ident()
        finally:
            await batcher.aclose()

    batcher, loop_thread = asyncio.run(scenario())
    stats = batcher.stats
    assert stats.computed == len(TEXTS) and stats.calls == len(TEXTS)
    # The first input woke the worker; everything that queued behind it ran without another wake-up.
    assert stats.batches == 1 and stats.largest_batch == len(TEXTS)
    assert gate.seen == list(TEXTS)  # first come, first served
    assert len(gate.threads) == 1 and loop_thread not in gate.threads
    # Each input waited for the inputs ahead of it only: what they do not explain is thread hops.
    assert len(stats.waits) == len(TEXTS)
    assert all(wait.waited >= 0 and wait.behind >= 0 for wait in stats.waits)


def test_identical_inputs_are_computed_once_and_shared(lazy: LazyEmbedder) -> None:
    gate = Gate(lazy.embed_one)

    async def scenario() -> tuple[EmbeddingBatcher, list[Vector]]:
        batcher = EmbeddingBatcher(gate, recent=0)
        try:
            running = [asyncio.ensure_future(batcher.embed(TEXTS[0])) for _ in range(3)]
            await held(gate)
            # The same text again while it runs, and another text asked for five times while queued.
            more = [asyncio.ensure_future(batcher.embed(TEXTS[0])) for _ in range(2)]
            more += [asyncio.ensure_future(batcher.embed(TEXTS[1])) for _ in range(5)]
            await asyncio.sleep(0)
            gate.open()
            return batcher, list(await asyncio.gather(*running, *more))
        finally:
            await batcher.aclose()

    batcher, vectors = asyncio.run(scenario())
    assert gate.seen == [TEXTS[0], TEXTS[1]]
    assert batcher.stats.computed == 2 and batcher.stats.shared == 8
    assert all(vector is vectors[0] for vector in vectors[:5])
    assert all(vector is vectors[5] for vector in vectors[5:])
    assert not vectors[0].flags.writeable  # shared between callers: nobody may change it


def test_a_text_asked_for_again_comes_from_the_memory_of_recent_ones(lazy: LazyEmbedder) -> None:
    async def scenario() -> EmbeddingBatcher:
        batcher = EmbeddingBatcher(lazy.embed_one, recent=2)
        try:
            first = await batcher.embed(TEXTS[0])
            assert await batcher.embed(TEXTS[0]) is first
            await batcher.embed(TEXTS[1])
            await batcher.embed(TEXTS[2])  # the memory holds two: TEXTS[0] is forgotten
            assert np.array_equal(await batcher.embed(TEXTS[0]), first)
            return batcher
        finally:
            await batcher.aclose()

    stats = asyncio.run(scenario()).stats
    assert stats.calls == 5 and stats.remembered == 1 and stats.computed == 4


def test_an_error_reaches_every_caller_of_its_input_and_no_other(lazy: LazyEmbedder) -> None:
    bad: Any = None  # not a text: the tokenizer refuses it on the worker thread

    async def scenario() -> list[Any]:
        batcher = EmbeddingBatcher(lazy.embed_one, recent=0)
        try:
            return list(
                await asyncio.gather(
                    batcher.embed(bad), batcher.embed(TEXTS[0]), batcher.embed(bad), return_exceptions=True
                )
            )
        finally:
            await batcher.aclose()

    first, good, second = asyncio.run(scenario())
    assert isinstance(first, TypeError) and second is first
    assert isinstance(good, np.ndarray)


def test_a_model_that_does_not_load_fails_its_callers(tmp_path: Any) -> None:
    missing = LazyEmbedder(tmp_path / "absent.onnx")

    async def scenario() -> None:
        batcher = EmbeddingBatcher(missing.embed_one)
        try:
            with pytest.raises(EmbedderMissing, match="make embedder"):
                await batcher.embed("hello")
        finally:
            await batcher.aclose()

    asyncio.run(scenario())


def test_the_queue_is_bounded(lazy: LazyEmbedder) -> None:
    gate = Gate(lazy.embed_one)

    async def scenario() -> EmbeddingBatcher:
        batcher = EmbeddingBatcher(gate, max_waiting=3, recent=0)
        try:
            running = asyncio.ensure_future(batcher.embed(TEXTS[0]))
            await held(gate)
            queued = [asyncio.ensure_future(batcher.embed(text)) for text in TEXTS[1:3]]
            await asyncio.sleep(0)
            with pytest.raises(ModelBusy) as refused:
                await batcher.embed(TEXTS[3])
            assert refused.value.status == 503 and refused.value.retryable
            # An input already queued is shared, not refused.
            again = asyncio.ensure_future(batcher.embed(TEXTS[1]))
            gate.open()
            await asyncio.gather(running, *queued, again)
            await batcher.embed(TEXTS[3])  # room again
            return batcher
        finally:
            await batcher.aclose()

    stats = asyncio.run(scenario()).stats
    assert stats.refused == 1 and stats.computed == 4


def test_a_caller_that_leaves_does_not_cancel_the_others(lazy: LazyEmbedder) -> None:
    gate = Gate(lazy.embed_one)

    async def scenario() -> Vector:
        batcher = EmbeddingBatcher(gate, recent=0)
        try:
            leaving = asyncio.ensure_future(batcher.embed(TEXTS[0]))
            staying = asyncio.ensure_future(batcher.embed(TEXTS[0]))
            await held(gate)
            leaving.cancel()
            gate.open()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            return await staying
        finally:
            await batcher.aclose()

    assert isinstance(asyncio.run(scenario()), np.ndarray)


def test_close_finishes_the_running_input_fails_the_queued_and_refuses_new_ones(lazy: LazyEmbedder) -> None:
    gate = Gate(lazy.embed_one)

    async def scenario() -> None:
        batcher = EmbeddingBatcher(gate, recent=0)
        running = asyncio.ensure_future(batcher.embed(TEXTS[0]))
        await held(gate)
        queued = [asyncio.ensure_future(batcher.embed(text)) for text in TEXTS[1:4]]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.aclose())
        await asyncio.sleep(0)
        for future in queued:
            with pytest.raises(BatcherClosed):
                await future
        gate.open()
        await closing
        assert isinstance(await running, np.ndarray)
        with pytest.raises(BatcherClosed):
            await batcher.embed(TEXTS[0])
        await batcher.aclose()  # twice is fine

    asyncio.run(scenario())
    assert gate.seen == [TEXTS[0]]  # nothing queued ran after the close
    assert not any(thread.name == "gateway-embedder" for thread in threading.enumerate())


# The whole gateway: 50 concurrent requests under a policy with a semantic signal (and a semantic cache).

BUG_REPORT = (
    "I am getting a strange error in my program and cannot figure out why. When I run the service it "
    "starts fine, accepts a few requests and then crashes with a segmentation fault somewhere inside "
    "the database driver. I have tried upgrading the driver, pinning an older version, running it under "
    "a debugger and adding logging around every call, but the crash moves around and the core dump "
    "only shows frames from the allocator. What would you check next, in which order, and why?"
)
BURST = 50
# Fires the burst from another process, so the client's own work takes nothing from the gateway's loop.
CLIENT = """
import asyncio, json, sys
import httpx

async def main(url, texts):
    limits = httpx.Limits(max_connections=len(texts), max_keepalive_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def ask(text):
            body = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
            response = await client.post("/v1/chat/completions", json=body)
            return [response.status_code, response.headers.get("x-gateway-cache")]
        print(json.dumps(await asyncio.gather(*(ask(text) for text in texts))))

asyncio.run(main(sys.argv[1], json.loads(sys.stdin.read())))
"""


class LoopWatch:
    """Runs on the gateway's loop: a 1 ms ticker noting how much CPU the loop's thread spent between
    consecutive ticks, which is the work done on the loop (callbacks, and any model run there). CPU
    time rather than lateness: on a busy machine the thread is also descheduled, which is not the loop
    being blocked."""

    def __init__(self) -> None:
        self.busy: list[float] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        cpu = time.thread_time()
        while not self._stop.is_set():
            await asyncio.sleep(0.001)
            now = time.thread_time()
            self.busy.append(now - cpu)
            cpu = now

    async def stop(self) -> None:
        self._stop.set()


def semantic_policy(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    from gateway.cache.verifier import Verifier

    return {
        "deployments": {"big": openai_deployment(upstream)},
        "routes": {"frontier": ["big"]},
        "signals": {
            "topic": {
                "kind": "semantic",
                "min_similarity": 0.2,
                "categories": {
                    "coding": ["My program crashes with an error, how do I fix this bug?"],
                    "billing": ["I was charged twice on my credit card"],
                },
            }
        },
        "rules": [
            {
                "name": "cached",
                "when": {"signal": "topic", "ne": "nothing"},
                "route": "frontier",
                "cache": {"similarity": Verifier().card.recommended_threshold},
            }
        ],
        "default_route": "frontier",
    }


def test_fifty_concurrent_semantic_requests_never_wait_on_each_other_and_never_block_the_loop(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(semantic_policy(upstream))
    batcher = gw.app.services.cache.batcher
    assert batcher is not None
    texts = [f"Case {number}. {BUG_REPORT}" for number in range(BURST)]
    warm_up = subprocess.run(
        [sys.executable, "-c", CLIENT, gw.url], input=json.dumps(["Hello there"]), text=True,
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(warm_up.stdout) == [[200, "miss"]]  # the model is loaded, the connection pool warm
    before, batches_before = batcher.stats.computed, batcher.stats.batches
    model_before = batcher.stats.model_seconds
    watch = LoopWatch()
    watching = asyncio.run_coroutine_threadsafe(watch.run(), bg.loop)
    burst = subprocess.run(
        [sys.executable, "-c", CLIENT, gw.url], input=json.dumps(texts), text=True,
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    bg.run(watch.stop())
    watching.result(timeout=10)
    assert json.loads(burst.stdout) == [[200, "miss"]] * BURST

    # The loop's own work between two ticks stayed small: no embedding (several ms of CPU each, for
    # texts this long) ran on it. Today's code ran every one of them there (up to 377 ms between ticks).
    assert max(watch.busy) < 0.005, sorted(round(busy * 1e3, 2) for busy in watch.busy)[-5:]

    stats = batcher.stats
    waits = list(stats.waits)[-BURST:]
    # Each text was embedded once, off the loop, and waited only for the texts queued before it: the
    # worker started them in queue order and never sat idle while one waited (what a handover costs is
    # waking the thread and getting the GIL back from the loop, small beside the model's own time).
    assert stats.computed - before == BURST
    assert [wait.ticket for wait in waits] == sorted(wait.ticket for wait in waits)
    handovers = sum(wait.handover for wait in waits)
    assert handovers < 0.25 * (stats.model_seconds - model_before), (handovers, stats.model_seconds)
    # They queued together: a few wake-ups of the worker for the whole burst, not one per request.
    assert stats.batches - batches_before < BURST // 2
