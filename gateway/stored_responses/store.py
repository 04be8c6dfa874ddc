"""What the stored-response backends share: `ThreadedResponseStore`, the async `ResponseStore` over a
blocking database (SQLite's or PostgreSQL's `BlockingDatabase`), and the errors they raise.

How a call reaches the database without blocking the event loop (`state/thread_turns.ThreadTurns`,
which the batch store shares): each one runs on a worker thread, one at a time (the database is one
connection); a call waits for its turn on the loop, holding no thread, and at most `turn_timeout`
seconds, then raises ResponseStoreUnavailable: when the database hangs, requests fail in bounded time
and the loop's worker threads stay free for the rest of the gateway. A turn ends when its thread's work
does, even if the caller was cancelled (a client that went away), so the connection is never used by
two threads at once.

Expiry: a response expires `ttl_seconds` after its `created_at` (the TTL in force when it was put).
An expired one is never returned, nor counted as deleted; its row is removed by `sweep()`, which `put`
runs itself, after a successful write, when `sweep_every` seconds (10 minutes) have passed since the
last sweep (and at the first put after start): at most SWEEP_BATCH rows each time, and at the next put
again while there are more. No background task is needed, and a store that nobody writes to keeps
only rows nobody can read.

A response id belongs to its tenant: another tenant's `get` finds nothing, its `delete` deletes
nothing, and its `put` of that id is refused (ValueError) while the owner's response has not expired.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from gateway.inbound.response_store import StoredResponse
from gateway.state.thread_turns import ThreadTurns
from gateway.stored_responses.schema import Row, row_of, stored_of

T = TypeVar("T")

logger = logging.getLogger("gateway.stored_responses")

# How often `put` sweeps expired rows away, and how many at most each time.
SWEEP_EVERY = 600.0
SWEEP_BATCH = 500


class ResponseStoreUnavailable(Exception):
    """The database cannot be reached, or is busy or closed, now: nothing was stored, read or deleted."""


class BlockingDatabase(Protocol):
    """A backend's table, called from one worker thread at a time. `put` says whether the row was
    written (False: its id is another tenant's unexpired response); `delete` returns when the deleted
    row would have expired (None: the tenant had no such row)."""

    def put(self, row: Row, now: float) -> bool: ...

    def get(self, tenant: str, response_id: str, now: float) -> Row | None: ...

    def delete(self, tenant: str, response_id: str) -> float | None: ...

    def sweep(self, now: float, limit: int) -> int: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def check_ttl(ttl_seconds: float) -> None:
    if not 0 < ttl_seconds < math.inf:
        raise ValueError(f"the stored responses' TTL must be a positive number of seconds, not {ttl_seconds}")


class ThreadedResponseStore:
    """A `ResponseStore` (gateway.inbound.response_store) over a blocking database; see the module."""

    def __init__(
        self,
        database: BlockingDatabase,
        *,
        name: str,
        ttl_seconds: float,
        turn_timeout: float,
        close_timeout: float,
        clock: Callable[[], float] = time.time,
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        check_ttl(ttl_seconds)
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.sweep_every = sweep_every
        self._database = database
        self._clock = clock
        self._next_sweep = -math.inf  # the first put sweeps what expired while the gateway was away
        self._turns = ThreadTurns(
            name, database.close, ResponseStoreUnavailable,
            turn_timeout=turn_timeout, close_timeout=close_timeout,
        )  # fmt: skip

    async def put(self, stored: StoredResponse) -> None:
        """Store (or replace) a response; ValueError when it is too large (schema.MAX_STORED_BYTES) or
        its id is another tenant's, ResponseStoreUnavailable when the database cannot take it now."""
        written = await self._turns.call(self._put, stored, self._clock())
        if not written:
            raise ValueError(f"response id {stored.id} is taken by another tenant")
        if self._clock() >= self._next_sweep:
            await self._sweep_now()

    def _put(self, stored: StoredResponse, now: float) -> bool:
        return self._database.put(row_of(stored, self.ttl_seconds), now)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        return await self._turns.call(self._get, tenant, response_id, self._clock())

    def _get(self, tenant: str, response_id: str, now: float) -> StoredResponse | None:
        row = self._database.get(tenant, response_id, now)
        return None if row is None else stored_of(row)

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Whether the tenant's own, unexpired response was deleted (an expired one is deleted too,
        but counts as not found, as `get` would say)."""
        expires_at = await self._turns.call(self._database.delete, tenant, response_id)
        return expires_at is not None and expires_at > self._clock()

    async def sweep(self) -> int:
        """Delete at most SWEEP_BATCH expired rows; how many."""
        return await self._turns.call(self._database.sweep, self._clock(), SWEEP_BATCH)

    async def _sweep_now(self) -> None:
        self._next_sweep = self._clock() + self.sweep_every
        try:
            swept = await self.sweep()
        except ResponseStoreUnavailable as exc:
            logger.warning("%s: expired responses not swept: %s", self.name, exc)
            return
        if swept >= SWEEP_BATCH:
            self._next_sweep = -math.inf  # more are waiting: again at the next put
        if swept:
            logger.info("%s: %d expired responses swept", self.name, swept)

    async def schema_version(self) -> int:
        return await self._turns.call(self._database.schema_version)

    def status(self) -> dict[str, Any]:
        """As last seen, without I/O (a readiness `BackingService`'s status)."""
        return self._turns.status()

    async def aclose(self) -> None:
        """Close the database once the call under way (if any) has ended; later calls raise
        ResponseStoreUnavailable. Waits at most `close_timeout` for that call: a call stuck past it is
        left to the process's end."""
        await self._turns.aclose()
