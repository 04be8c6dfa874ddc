"""The Batch API's worker: runs the lines of every replica's batches through the request path, in spare
capacity, and writes what each answered.

A replica's runner claims lines from the batch store (`batches/store.ThreadedBatchStore.claim`: a lease,
`SKIP LOCKED` on PostgreSQL, so replicas never run the same line at once), at most `concurrency` at a
time, and runs each as the batch's tenant would have sent it: parsed by the endpoint's own inbound
adapter, decided by the live policy (so a line may be answered from the cache or by the local model),
its budget reserved and settled, its spend recorded — as `deferrable`, so at every deployment with a
capacity limit it waits behind all other traffic (ageing aside) and runs in the capacity left over.
While lines run, their leases are extended; a runner that dies (kill -9) stops extending them, and
after the lease another runner claims them again.

Order of writes for one line: the spend record is spooled first (`RequestPath.finish`, durable before
it returns), then the line's output and cost are stored (`finish_line`, one transaction). A crash
before the record loses no spend (the intent spooled before the upstream call is recovered as an
interrupted request at its prompt's price) and the line runs again. A crash in the instant between the
two writes leaves the line answered in the ledger but not in its batch: it runs again,
and, finding its earlier answered record (`answered_before`, after the dead process's spool was
recovered at start-up), records under the same id, which the ledger keeps once.

Failures: a request the gateway or its upstream refuses (4xx, a budget used up) is the line's answer,
kept in the error file with its status and the API's error body, as OpenAI does. Capacity and transient
upstream failures (503, 429 from a limit, timeouts) are retried with back-off while the line is held,
up to `ATTEMPTS_PER_CLAIM` times, then kept as the line's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import orjson

from gateway.batches.rows import ClaimedLine, FinishedState, LineKey, new_request_id
from gateway.batches.store import BatchStoreUnavailable, ThreadedBatchStore
from gateway.capacity.priority import DEFERRABLE
from gateway.deferred.background_responses import BackgroundResponses, background_response_id
from gateway.errors import BudgetExceeded, GatewayError
from gateway.inbound.adapter import InboundApi
from gateway.inbound.responses import Responses
from gateway.path.request_path import RequestPath
from gateway.wire import Caller, DeferredLine

logger = logging.getLogger("gateway.batches.runner")

# How long a claimed line is held before another replica may take it, and how often it is extended.
LEASE_SECONDS = 60.0
# How often an idle runner looks for new lines, and finalizes batches whose lines are all done.
POLL_SECONDS = 1.0
# Lines a replica keeps waiting for an upstream's Batch API (parked: they hold no place among the lines
# it runs at once).
MAX_PARKED = 10_000
# A line that fails for a transient reason is tried this many times before its error is kept.
ATTEMPTS_PER_CLAIM = 5
LONGEST_PAUSE_SECONDS = 30.0


class BatchRunner:
    def __init__(
        self,
        store: ThreadedBatchStore,
        path: RequestPath,
        apis: Mapping[str, InboundApi],
        *,
        concurrency: int = 4,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        worker_id: str | None = None,
        background: BackgroundResponses | None = None,
        answered_before: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self._background = background
        # The id of the answered spend record a request id already has in the ledger, if any.
        self._answered_before_lookup = answered_before
        self.store = store
        self.worker_id = worker_id or f"{os.uname().nodename}-{os.getpid()}-{os.urandom(3).hex()}"
        self._path = path
        self._apis = dict(apis)
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._running: dict[LineKey, asyncio.Task[None]] = {}
        # Running lines that wait for an upstream's Batch API (`deferred/upstream_batches.py`).
        self._parked: set[LineKey] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Claim and run lines until cancelled; the lines still running then are left to their leases."""
        heartbeat = asyncio.create_task(self._extend_leases())
        try:
            while True:
                claimed = await self._claim()
                for line in claimed:
                    task = asyncio.create_task(self._run_line(line))
                    self._running[line.key] = task
                    task.add_done_callback(partial(self._ended, line.key))
                with contextlib.suppress(BatchStoreUnavailable):
                    await self.store.finalize_ready()
                if not claimed or self._active() >= self._concurrency:
                    await self._pause()
        finally:
            heartbeat.cancel()
            for task in list(self._running.values()):
                task.cancel()

    def _active(self) -> int:
        return len(self._running) - len(self._parked)

    def _park(self, key: LineKey) -> None:
        """The line waits for an upstream's Batch API: its place goes to the next line."""
        if key in self._running:
            self._parked.add(key)
            self._wake.set()

    def _ended(self, key: LineKey, task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)
        self._parked.discard(key)
        if not task.cancelled() and task.exception() is not None:
            logger.error("batch line %s failed", key, exc_info=task.exception())

    async def _claim(self) -> list[ClaimedLine]:
        free = min(self._concurrency - self._active(), MAX_PARKED - len(self._parked))
        if free <= 0:
            return []
        try:
            return await self.store.claim(self.worker_id, free, self._lease)
        except BatchStoreUnavailable as exc:
            logger.warning("batch store unavailable, no lines claimed: %s", exc)
            return []

    async def _pause(self) -> None:
        """Until a running line ends or parks, or the poll interval passes."""
        active = [task for key, task in self._running.items() if key not in self._parked]
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([*active, woken], timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self._wake.clear()

    async def _extend_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            keys = list(self._running)
            try:
                held = set(await self.store.extend_lease(self.worker_id, keys, self._lease))
            except BatchStoreUnavailable as exc:
                logger.warning("batch store unavailable, leases not extended: %s", exc)
                continue
            for key in keys:
                if key not in held:  # cancelled, or taken over after this replica stalled
                    task = self._running.get(key)
                    if task is not None:
                        task.cancel()

    async def _run_line(self, line: ClaimedLine) -> None:
        api = self._apis.get(line.url)
        if api is None:  # the store accepts only endpoints the gateway serves; a newer replica's?
            logger.error("batch %s line %d: no adapter for %s", line.batch_id, line.line_no, line.url)
            return
        request_id = f"{line.batch_id}-{line.line_no}"
        # As its creator would have sent it (a batch made before the creator was kept: as its tenant).
        team = line.team if line.team is not None or line.key_id is not None else line.tenant or None
        caller = Caller(team=team, key=line.key_id, priority=DEFERRABLE)
        response_id = background_response_id(line.custom_id)
        # Run again after a crash: if the earlier run was recorded answered, this one records under its
        # record id (the ledger keeps one record by id), so the line is not charged twice.
        earlier = await self._answered_before(request_id) if line.attempts > 1 else None
        deferred = DeferredLine(
            f"{line.batch_id}:{line.line_no}", partial(self._park, line.key),
            parkable=response_id is None, record_id=earlier,
        )  # fmt: skip
        body = {**line.body, "stream": False}
        body.pop("stream_options", None)
        raw = orjson.dumps(body)
        status, answer, cost = 500, b"", 0.0
        for attempt in range(ATTEMPTS_PER_CLAIM):
            try:
                status, answer, cost = await self._answer(api, raw, request_id, caller, response_id, deferred)
                break
            except GatewayError as error:
                status, answer = error.status, api.error_body(error)
                if not error.retryable or isinstance(error, BudgetExceeded):
                    break
                if attempt + 1 < ATTEMPTS_PER_CLAIM:
                    retry_after = getattr(error, "retry_after", None) or 2.0**attempt
                    await asyncio.sleep(min(LONGEST_PAUSE_SECONDS, retry_after))
        if response_id is not None and status >= 400 and self._background is not None:
            await self._tell_failed(line.tenant, response_id, answer)
        output = _output(line.custom_id, request_id, status, answer)
        state: FinishedState = "done" if status < 400 else "failed"
        try:
            kept = await self.store.finish_line(
                self.worker_id, line.batch_id, line.line_no, state, output, cost
            )
        except BatchStoreUnavailable as exc:
            logger.warning("batch %s line %d: answer not kept: %s", line.batch_id, line.line_no, exc)
            return
        if not kept:
            logger.warning(
                "batch %s line %d: taken over by another worker before its answer was kept",
                line.batch_id, line.line_no,
            )  # fmt: skip

    async def _answered_before(self, request_id: str) -> str | None:
        if self._answered_before_lookup is None:
            return None
        try:
            return await self._answered_before_lookup(request_id)
        except Exception:  # the ledger's own errors: run the line as if for the first time
            logger.warning("could not look up earlier records of %s", request_id, exc_info=True)
            return None

    async def _tell_failed(self, tenant: str, response_id: str, answer: bytes) -> None:
        assert self._background is not None
        try:
            message = str(orjson.loads(answer)["error"]["message"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = "The request failed."
        try:
            await self._background.failed(tenant, response_id, message)
        except Exception:  # the stored responses' own errors: the line's error is kept all the same
            logger.warning("background response %s: its failure could not be stored", response_id)

    async def _answer(
        self,
        api: InboundApi,
        raw: bytes,
        request_id: str,
        caller: Caller,
        response_id: str | None,
        deferred: DeferredLine,
    ) -> tuple[int, bytes, float]:
        """One line through the request path, recorded: its status, body and cost; a background
        response's answer is stored under the id the client was given."""
        path = self._path
        if response_id is not None and isinstance(api, Responses):
            request = await api.parse(raw, request_id, caller, response_id=response_id)
        else:
            request = await api.parse(raw, request_id, caller)
        request.deferred = deferred
        exchange = await path.answer(request, caller)
        completion = exchange.answer.completion
        try:
            if completion is None:  # a stream (never asked for here) has no body to keep
                raise GatewayError("The batch line was answered as a stream.")
            body = await api.body_of(request, completion)
        except GatewayError as error:
            path.finish(exchange, status=error.status, error=error.code or error.error_type)
            raise
        except BaseException:
            path.finish(exchange, status=500, error="internal_error")
            raise
        record = path.finish(exchange)
        return 200, body, record.cost_usd or 0.0


def _output(custom_id: str, request_id: str, status: int, body: bytes) -> dict[str, Any]:
    """The line's output object, as OpenAI's batch output files hold them."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = body.decode("utf-8", "replace")
    return {
        "id": new_request_id(),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": parsed},
        "error": None,
    }
