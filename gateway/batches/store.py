"""`ThreadedBatchStore`: the Batch API's files, batches and lines, as an async store over a blocking
database (SQLite's or PostgreSQL's `BlockingBatchDatabase`), and the error it raises when that
database cannot answer.

How a call reaches the database without blocking the event loop (`state/thread_turns.ThreadTurns`,
as the stored responses do): each one runs on a worker thread, one at a time (one connection). A
call waits for its turn on the loop, holding no thread, at most `turn_timeout` seconds, then raises
BatchStoreUnavailable: when the database hangs, callers fail in bounded time. A turn ends when its
thread's work does, even if the caller was cancelled, so the connection is never used by two threads
at once. Each call is one transaction (`finalize_ready` is one a batch): it happens whole or not at
all, whatever kills the process when.

Tenancy: every read and change a client asks for is scoped to its tenant: another tenant's file or
batch id is not found. The worker's calls (`claim`, `extend_lease`, `finish_line`, `finalize_ready`)
span all tenants; a claimed line says whose it is.

Times: `now` (unix seconds) may be given to any call that changes something; by default it is the
store's clock. Stored timestamps are whole seconds; leases keep fractions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, TypeVar

from gateway.batches import operations, upstream
from gateway.batches.lines import ENDPOINTS, MAX_FILE_BYTES, BatchLine
from gateway.batches.rows import (
    FILE_PURPOSES,
    BatchRow,
    ClaimedLine,
    FileRow,
    FinishedState,
    LineKey,
    Usage,
    check_metadata,
    new_batch_id,
    new_file_id,
    window_seconds,
)
from gateway.batches.schema import Sql, schema_version
from gateway.state.thread_turns import ThreadTurns

T = TypeVar("T")

logger = logging.getLogger("gateway.batches")

# How many times a line is claimed before, its leases all lost, it is failed.
MAX_ATTEMPTS = 3
# How many batches one `finalize_ready` looks at.
FINALIZE_BATCH = 100


class BatchStoreUnavailable(Exception):
    """The database cannot be reached, or is busy or closed, now: nothing was stored, read or changed."""


class BlockingBatchDatabase(Protocol):
    """A backend, called from one worker thread at a time: `read` runs `work` in a transaction that
    only reads, `write` in one that may write (committed when `work` returns, rolled back when it
    raises); BatchStoreUnavailable when the database cannot."""

    def read(self, work: Callable[[Sql], T]) -> T: ...

    def write(self, work: Callable[[Sql], T]) -> T: ...

    def close(self) -> None: ...


class ThreadedBatchStore:
    """The batch store over a blocking database; see the module."""

    def __init__(
        self,
        database: BlockingBatchDatabase,
        *,
        name: str,
        turn_timeout: float,
        close_timeout: float,
        clock: Callable[[], float] = time.time,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self.name = name
        self.max_attempts = max_attempts
        self._database = database
        self._clock = clock
        self._turns = ThreadTurns(
            name, database.close, BatchStoreUnavailable,
            turn_timeout=turn_timeout, close_timeout=close_timeout,
        )  # fmt: skip

    # Files.

    async def create_file(
        self,
        tenant: str,
        purpose: str,
        filename: str,
        content: bytes,
        *,
        expires_at: int | None = None,
        now: float | None = None,
    ) -> FileRow:
        """Store a file; ValueError for a purpose other than FILE_PURPOSES or content over 200 MB."""
        if purpose not in FILE_PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(FILE_PURPOSES)}, not {purpose!r}")
        if len(content) > MAX_FILE_BYTES:
            raise ValueError(f"a file may have at most {MAX_FILE_BYTES} bytes (200 MB), not {len(content)}")
        row = FileRow(new_file_id(), tenant, purpose, filename, len(content), int(self._now(now)), expires_at)
        await self._write(lambda sql: operations.insert_file(sql, row, content))
        return row

    async def get_file(self, tenant: str, file_id: str) -> FileRow | None:
        return await self._read(lambda sql: operations.select_file(sql, tenant, file_id))

    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        return await self._read(lambda sql: operations.select_content(sql, tenant, file_id))

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        """Whether the tenant's file was deleted (a batch that used it keeps its rows and lines)."""
        return await self._write(lambda sql: operations.delete_file(sql, tenant, file_id))

    # Batches.

    async def create_batch(
        self,
        tenant: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        lines: Sequence[BatchLine],
        *,
        team: str | None = None,
        key_id: str | None = None,
        now: float | None = None,
    ) -> BatchRow:
        """Store a batch `in_progress` and all its lines `pending`, in one transaction; ValueError for
        an endpoint, window or metadata OpenAI would refuse, no lines, a line for another url, or an
        input file that is not the tenant's `batch` file. `team` and `key_id` are its creator's: its
        lines count against their budgets and rate limits."""
        if not lines:
            raise ValueError("a batch needs at least one line")
        for line in lines:
            if line.url != endpoint:
                raise ValueError(f"line {line.line_no}: url {line.url!r} is not the batch's endpoint")
        at = int(self._now(now))
        # The batch's model: the one all its lines name, if they do (OpenAI's batches have one).
        models = {_model_of(line) for line in lines}
        model = models.pop() if len(models) == 1 else None
        row = _new_batch(
            tenant, input_file_id, endpoint, completion_window, metadata, at, "in_progress", len(lines)
        )
        row = replace(row, model=model, in_progress_at=at, team=team, key_id=key_id)
        await self._write(lambda sql: operations.insert_batch(sql, row, lines))
        return row

    async def create_failed_batch(
        self,
        tenant: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        errors: Sequence[Mapping[str, Any]],
        *,
        now: float | None = None,
    ) -> BatchRow:
        """Store a batch whose input file was refused: `failed`, with `errors` (OpenAI's `errors.data`
        items, e.g. `BatchInputError.as_batch_error()`), and no lines."""
        at = int(self._now(now))
        row = _new_batch(tenant, input_file_id, endpoint, completion_window, metadata, at, "failed", 0)
        row = replace(row, errors=[dict(error) for error in errors], failed_at=at)
        await self._write(lambda sql: operations.insert_batch(sql, row, ()))
        return row

    async def get_batch(self, tenant: str, batch_id: str) -> BatchRow | None:
        return await self._read(lambda sql: operations.select_batch(sql, tenant, batch_id))

    async def list_batches(self, tenant: str, after: str | None = None, limit: int = 20) -> list[BatchRow]:
        """The tenant's batches, newest first, at most `limit`, starting after the batch `after` (an
        `after` that is not the tenant's batch: none). Ask for one more than a page to learn whether
        there are more."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return await self._read(lambda sql: operations.select_batches(sql, tenant, after, limit))

    async def cancel_batch(self, tenant: str, batch_id: str, now: float | None = None) -> BatchRow | None:
        """Begin cancelling the batch (`cancelling`; its pending lines will not run, its running ones
        may finish; `finalize_ready` makes it `cancelled`); a finished or cancelling batch is returned
        as it is. None: the tenant has no such batch."""
        at = self._now(now)
        return await self._write(lambda sql: operations.cancel_batch(sql, tenant, batch_id, at))

    # The worker's side.

    async def claim(
        self, worker_id: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[ClaimedLine]:
        """Claim up to `limit` lines of in-progress batches, oldest batch first: `pending` ones, and
        `running` ones whose lease ran out (their worker died) that have had fewer than `max_attempts`
        claims. Each is held by `worker_id` for `lease_seconds`; no other claim takes it meanwhile."""
        if limit < 1 or lease_seconds <= 0:
            raise ValueError("claim needs a limit of at least 1 and a positive lease")
        at = self._now(now)
        return await self._write(
            lambda sql: operations.claim(sql, worker_id, limit, at + lease_seconds, at, self.max_attempts)
        )

    async def extend_lease(
        self, worker_id: str, keys: Sequence[LineKey], lease_seconds: float, now: float | None = None
    ) -> list[LineKey]:
        """Hold the lines `worker_id` still holds `lease_seconds` longer; those lines (one missing was
        reclaimed after its lease ran out, cancelled, or finished)."""
        lease_until = self._now(now) + lease_seconds
        if not keys:
            return []
        return await self._write(lambda sql: operations.extend_lease(sql, worker_id, keys, lease_until))

    async def finish_line(
        self,
        worker_id: str,
        batch_id: str,
        line_no: int,
        state: FinishedState,
        response_json: Mapping[str, Any] | bytes | str,
        cost_usd: float,
        now: float | None = None,
    ) -> bool:
        """Record a line's output object (`{"id", "custom_id", "response": {"status_code",
        "request_id", "body"}, "error"}`, as a mapping or JSON text) as `done` or `failed`, its cost and
        tokens added to its batch, in one transaction, if `worker_id` still holds the line; whether it
        did. False changes nothing: a line is never finished twice, nor by a worker whose lease ran out
        and whose line another worker claimed since."""
        if state not in ("done", "failed"):
            raise ValueError(f"a line finishes 'done' or 'failed', not {state!r}")
        at = self._now(now)

        def work(sql: Sql) -> bool:
            output, usage = operations.output_text(response_json)
            return operations.finish_line(
                sql, worker_id, (batch_id, line_no), state, output, usage, cost_usd, at
            )

        return await self._write(work)

    async def finalize_ready(self, now: float | None = None) -> list[str]:
        """Finalize the batches whose time has come (`operations.finalize_batch`: completed, expired
        or cancelled, with their output and error files), each in its own transaction; their ids."""
        at = self._now(now)
        candidates = await self._read(
            lambda sql: operations.finalize_candidates(sql, at, self.max_attempts, FINALIZE_BATCH)
        )
        finalized = []
        for batch_id in candidates:
            finalize = partial(
                operations.finalize_batch, batch_id=batch_id, now=at, max_attempts=self.max_attempts
            )
            if await self._write(finalize):
                finalized.append(batch_id)
        if finalized:
            logger.info("%s: %d batches finalized", self.name, len(finalized))
        return finalized

    # Lines sent on to an upstream's own Batch API (`upstream.py`, `deferred/upstream_batches.py`).

    async def queue_upstream(
        self, key: str, deployment: str, url: str, body: Mapping[str, Any], now: float | None = None
    ) -> bool:
        """Queue a line for the deployment's Batch API unless it is queued already; whether it was new."""
        at = self._now(now)
        return await self._write(lambda sql: upstream.queue_line(sql, key, deployment, url, body, at))

    async def upstream_result(self, key: str) -> upstream.LineResult | None:
        return await self._read(lambda sql: upstream.line_result(sql, key))

    async def forget_upstream(self, key: str) -> None:
        await self._write(lambda sql: upstream.forget_line(sql, key))

    async def queued_upstream(self) -> list[upstream.QueuedGroup]:
        return await self._read(upstream.queued_groups)

    async def open_submission(
        self, submission_id: str, deployment: str, url: str, limit: int, hold_seconds: float,
        now: float | None = None,
    ) -> list[tuple[str, str]]:  # fmt: skip
        at = self._now(now)
        return await self._write(
            lambda sql: upstream.open_submission(
                sql, submission_id, deployment, url, limit, at, at + hold_seconds
            )
        )

    async def due_submissions(
        self, hold_seconds: float, limit: int, now: float | None = None
    ) -> list[upstream.Submission]:
        at = self._now(now)
        return await self._write(lambda sql: upstream.take_due_submissions(sql, at, at + hold_seconds, limit))

    async def submission_lines(self, submission_id: str) -> list[tuple[str, str]]:
        return await self._read(lambda sql: upstream.submission_lines(sql, submission_id))

    async def mark_submitted(
        self, submission_id: str, upstream_id: str, next_look_seconds: float, now: float | None = None
    ) -> None:
        at = self._now(now) + next_look_seconds
        await self._write(lambda sql: upstream.mark_submitted(sql, submission_id, upstream_id, at))

    async def end_submission(
        self,
        submission_id: str,
        answers: Mapping[str, tuple[int, Any]],
        unanswered: tuple[int, Any],
        now: float | None = None,
    ) -> list[str]:
        at = self._now(now)
        return await self._write(
            lambda sql: upstream.end_submission(sql, submission_id, answers, unanswered, at)
        )

    async def upstream_counts(self) -> dict[str, int]:
        return await self._read(upstream.open_counts)

    # The store itself.

    async def schema_version(self) -> int:
        return await self._read(schema_version)

    def status(self) -> dict[str, Any]:
        """As last seen, without I/O (a readiness `BackingService`'s status)."""
        return self._turns.status()

    async def aclose(self) -> None:
        """Close the database once the call under way (if any) has ended; later calls raise
        BatchStoreUnavailable. Waits at most `close_timeout` for that call."""
        await self._turns.aclose()

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    async def _read(self, work: Callable[[Sql], T]) -> T:
        return await self._turns.call(self._database.read, work)

    async def _write(self, work: Callable[[Sql], T]) -> T:
        return await self._turns.call(self._database.write, work)


def _model_of(line: BatchLine) -> str | None:
    model = line.body.get("model")
    return model if isinstance(model, str) else None


def _new_batch(
    tenant: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    at: int,
    status: str,
    total: int,
) -> BatchRow:
    """A new batch's row, its id made here; ValueError for an endpoint, completion window or metadata
    OpenAI would refuse."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}")
    window = window_seconds(completion_window)
    check_metadata(metadata)
    return BatchRow(
        id=new_batch_id(),
        tenant=tenant,
        endpoint=endpoint,
        model=None,
        input_file_id=input_file_id,
        completion_window=completion_window,
        status=status,
        metadata=None if metadata is None else dict(metadata),
        errors=None,
        created_at=at,
        in_progress_at=None,
        finalizing_at=None,
        completed_at=None,
        failed_at=None,
        expired_at=None,
        cancelling_at=None,
        cancelled_at=None,
        expires_at=at + window,
        output_file_id=None,
        error_file_id=None,
        total=total,
        completed=0,
        failed=0,
        cost_usd=0.0,
        usage=Usage(),
    )
