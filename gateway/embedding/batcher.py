"""Model calls for the event loop, made off it: a caller awaits one input's result, and the model runs on
one worker thread of its own, never on the loop (onnxruntime releases the GIL while it runs).

Inputs queue for the worker, which runs whatever is queued back to back and sleeps only when nothing
is: inputs that arrive while it is busy make one batch with the ones before them, and the thread hop is
paid once per batch, not per input. An input already queued or running is not queued again: its callers
share the one result. Each input is its own model call and each caller is answered as soon as its own
input is done. Inputs are not padded into one tensor on purpose: with dynamic int8 quantisation a
padded batch changes every text's vector (cosine to its solo vector down to ~0.98 on ShareGPT prompts,
even for texts of the same length; `python -m gateway.embedding.bench --drift`), and the semantic
cache needs a text's vector not to depend on its neighbours. On one core it would not be faster either.
Results are the model's own, bit for bit, however they were asked for.

The queue is bounded: past `max_waiting` distinct inputs queued or running, a call is refused with
`ModelBusy` (503) instead of joining a wait the request would time out in anyway. A memory of recent
results (`recent` entries) answers an input asked for again without the model. An error reaches every
caller of that input. `aclose` refuses new calls, fails those still queued, lets the running input
finish and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from gateway.errors import GatewayError

if TYPE_CHECKING:  # numpy is imported with the model, not by a gateway whose policy needs none
    import numpy as np
    import numpy.typing as npt

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
Vector: TypeAlias = "npt.NDArray[np.float32]"

# Per-input queue waits kept for inspection (the tests and the benchmark read them).
KEPT_WAITS = 4096


class ModelBusy(GatewayError):
    """Too many inputs are waiting for a local model: the request is refused rather than queued."""

    status = 503
    error_type = "server_error"
    code: str | None = "model_busy"

    @property
    def retryable(self) -> bool:
        return True


class BatcherClosed(RuntimeError):
    """The batcher was closed (the gateway is shutting down)."""


@dataclass(frozen=True, slots=True)
class QueueWait:
    """How one computed input waited between being queued and its model call starting."""

    # Its place in the queue (inputs are started in this order).
    ticket: int
    waited: float
    # Of that, what the model spent on the inputs ahead of it (the one running when it came included).
    behind: float
    # From when the worker could have started it (the input before it done, or it queued, whichever came
    # later) to when it did: waking the thread, and the GIL handed back by the loop.
    handover: float


@dataclass(slots=True)
class BatcherStats:
    calls: int = 0
    # Inputs the model ran on, and the batches they ran in (one thread wake-up each).
    computed: int = 0
    batches: int = 0
    largest_batch: int = 0
    # Calls answered by an input already queued or running, and from the memory of recent results.
    shared: int = 0
    remembered: int = 0
    refused: int = 0
    failed: int = 0
    model_seconds: float = 0.0
    waits: deque[QueueWait] = field(default_factory=lambda: deque(maxlen=KEPT_WAITS))


@dataclass(slots=True)
class _Pending(Generic[K, R]):
    item: K
    ticket: int
    future: asyncio.Future[R]
    queued_at: float
    # The worker's model clock when the input was queued (for QueueWait.behind).
    clock_at_queue: float


_STOP = object()


class MicroBatcher(Generic[K, R]):
    """`await batcher.result(item)` is `model(item)`, computed on the batcher's worker thread."""

    def __init__(
        self,
        model: Callable[[K], R],
        *,
        name: str,
        max_waiting: int = 1024,
        recent: int = 0,
        memorable: Callable[[K], bool] | None = None,
    ) -> None:
        """`recent`: how many results to remember (0: none); `memorable`: which inputs may be (all)."""
        if max_waiting < 1 or recent < 0:
            raise ValueError("max_waiting must be positive and recent not negative")
        self.name = name
        self.stats = BatcherStats()
        self._model = model
        self._max_waiting = max_waiting
        self._recent_size = recent
        self._memorable = memorable
        self._recent: OrderedDict[K, R] = OrderedDict()
        # Inputs queued or running, on the loop's side; the worker's side is its inbox.
        self._pending: dict[K, _Pending[K, R]] = {}
        self._inbox: queue.SimpleQueue[_Pending[K, R] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # The input the worker is running (set and cleared by the worker thread).
        self._current: _Pending[K, R] | None = None
        # Seconds the model has run: written by the worker thread only.
        self._model_clock = 0.0
        self._closed = False
        self._tickets = 0

    @property
    def waiting(self) -> int:
        """Distinct inputs queued or running now."""
        return len(self._pending)

    async def result(self, item: K) -> R:
        if self._closed:
            raise BatcherClosed(f"the {self.name} batcher is closed")
        self.stats.calls += 1
        if self._recent_size:
            known = self._recent.get(item)
            if known is not None:
                self._recent.move_to_end(item)
                self.stats.remembered += 1
                return known
        loop = asyncio.get_running_loop()
        pending = self._pending.get(item)
        if pending is not None and pending.future.get_loop() is loop:
            self.stats.shared += 1
        else:  # (an input left behind by a loop that has since closed is asked for again)
            if len(self._pending) >= self._max_waiting:
                self.stats.refused += 1
                raise ModelBusy(
                    f"The gateway's local model ({self.name}) has {len(self._pending)} inputs waiting; "
                    "try again shortly."
                )
            self._tickets += 1
            pending = _Pending(
                item, self._tickets, loop.create_future(), time.perf_counter(), self._model_clock
            )
            self._pending[item] = pending
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._inbox.put(pending)
        # One caller leaving (a client that disconnects) must not cancel the others' shared result.
        return await asyncio.shield(pending.future)

    def _work(self) -> None:
        """The worker thread: each queued input in turn, each caller answered as soon as it is done."""
        idle = True
        run = 0
        free_since = 0.0
        while True:
            taken = self._inbox.get()
            if taken is _STOP:
                return
            assert isinstance(taken, _Pending)
            pending: _Pending[K, R] = taken
            if idle:
                self.stats.batches += 1
                run = 0
            run += 1
            self.stats.largest_batch = max(self.stats.largest_batch, run)
            result: R | None = None
            error: BaseException | None = None
            behind = self._model_clock - pending.clock_at_queue
            self._current = pending
            started = time.perf_counter()
            if self._closed:
                error = BatcherClosed(f"the {self.name} batcher closed before this input ran")
            else:
                try:
                    result = self._model(pending.item)
                except Exception as failure:
                    error = failure
            ended = time.perf_counter()
            took = ended - started
            self._current = None
            self._model_clock += took
            idle = self._inbox.empty()
            handover = started - max(free_since, pending.queued_at)
            wait = QueueWait(pending.ticket, started - pending.queued_at, behind, handover)
            free_since = ended
            loop = pending.future.get_loop()
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits for it any more
                loop.call_soon_threadsafe(self._settle, pending, result, error, wait, took)

    def _settle(
        self,
        pending: _Pending[K, R],
        result: R | None,
        error: BaseException | None,
        wait: QueueWait | None,
        took: float,
    ) -> None:
        """On the loop: answer every caller of one input."""
        if self._pending.get(pending.item) is pending:
            del self._pending[pending.item]
        if wait is not None:
            self.stats.computed += 1
            self.stats.model_seconds += took
            self.stats.waits.append(wait)
        if pending.future.done():
            return
        if error is not None:
            self.stats.failed += 1
            pending.future.set_exception(error)
            pending.future.exception()  # marked as read: callers that left must leave no warning behind
            return
        assert result is not None
        pending.future.set_result(result)
        if self._recent_size and (self._memorable is None or self._memorable(pending.item)):
            self._recent[pending.item] = result
            if len(self._recent) > self._recent_size:
                self._recent.popitem(last=False)

    async def aclose(self) -> None:
        """Refuse new calls, fail the queued ones, let the running input finish, join the thread."""
        if self._closed:
            return
        self._closed = True
        closed = BatcherClosed(f"the {self.name} batcher closed before this input ran")
        running = self._current
        # The worker skips what it still finds queued; their callers are told now. The running input's
        # callers get its result.
        for pending in list(self._pending.values()):
            if pending is not running and not pending.future.done():
                pending.future.set_exception(closed)
                pending.future.exception()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(_STOP)
            # At most the running input is left; still, never join a thread on the loop.
            await asyncio.to_thread(thread.join)


# Texts longer than this are not remembered (the memory's size is bounded by its entries and this).
RECENT_TEXT_CHARS = 4096


def short_text(text: str) -> bool:
    return len(text) <= RECENT_TEXT_CHARS


class EmbeddingBatcher(MicroBatcher[str, Vector]):
    """The sentence embedder behind a micro-batcher: `await batcher.embed(text)` is the text's vector,
    bit for bit what `Embedder.embed_one(text)` gives (read-only: it is shared and remembered). The
    memory of recent texts holds up to `recent` texts of at most RECENT_TEXT_CHARS characters
    (2,048 by default: about 3 MB of vectors, at most 8 MB of text)."""

    def __init__(
        self, embed_one: Callable[[str], Vector], *, max_waiting: int = 1024, recent: int = 2048
    ) -> None:
        def read_only(text: str) -> Vector:
            vector = embed_one(text)
            vector.flags.writeable = False
            return vector

        super().__init__(
            read_only, name="gateway-embedder", max_waiting=max_waiting, recent=recent, memorable=short_text
        )

    async def embed(self, text: str) -> Vector:
        return await self.result(text)
