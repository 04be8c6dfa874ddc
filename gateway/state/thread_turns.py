"""`ThreadTurns`: one blocking database connection's calls from the event loop, each on a worker thread,
one at a time, in bounded time: what the stored responses and the batch store share.

A call waits for its turn on the loop, holding no thread, and at most `turn_timeout` seconds, then
raises the store's own unavailable error: when the database hangs, callers fail in bounded time and the
loop's worker threads stay free for the rest of the gateway. A turn ends when its thread's work does,
even if the caller was cancelled (a client that went away), so the connection is never used by two
threads at once. The last outcome is kept for readiness (`status`), without I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("gateway.state")


class ThreadTurns:
    def __init__(
        self,
        name: str,
        close: Callable[[], None],
        unavailable: type[Exception],
        *,
        turn_timeout: float,
        close_timeout: float,
    ) -> None:
        """`close` closes the database (once, at `aclose`); `unavailable` is the error a call raises when
        the store is closed or busy, and the one whose failures `status` reports."""
        self.name = name
        self._close = close
        self._unavailable = unavailable
        self._turn_timeout = turn_timeout
        self._close_timeout = close_timeout
        self._turn = asyncio.Lock()
        self._closed = False
        # As last seen, for readiness: when calls began failing (None: the last one worked), and why.
        self.failing_since: float | None = None
        self.last_error: str | None = None

    async def call(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise self._unavailable(f"{self.name}: closed")
        try:
            async with asyncio.timeout(self._turn_timeout):
                await self._turn.acquire()
        except TimeoutError:
            raise self._unavailable(f"{self.name}: busy, no turn within {self._turn_timeout:g} s") from None
        if self._closed:  # closed while this call waited for its turn
            self._turn.release()
            raise self._unavailable(f"{self.name}: closed")
        try:
            done = asyncio.ensure_future(asyncio.to_thread(work, *args, **kwargs))
        except BaseException:
            self._turn.release()
            raise
        done.add_done_callback(self._end_turn)
        try:
            # Shielded: a cancelled caller stops waiting, the thread's work still ends its turn.
            result = await asyncio.shield(done)
        except self._unavailable as exc:
            if self.failing_since is None:
                self.failing_since = time.time()
            self.last_error = str(exc)
            raise
        self.failing_since = self.last_error = None
        return result

    def _end_turn(self, done: asyncio.Future[Any]) -> None:
        self._turn.release()
        if not done.cancelled():
            done.exception()  # retrieved: a cancelled caller's failure is not "never retrieved"

    def status(self) -> dict[str, Any]:
        """As last seen, without I/O (a readiness `BackingService`'s status)."""
        return {
            "ok": self.failing_since is None,
            "failing_since": self.failing_since,
            "error": self.last_error,
        }

    async def aclose(self) -> None:
        """Close the database once the call under way (if any) has ended; later calls raise. Waits at
        most `close_timeout` for that call: a call stuck past it is left to the process's end."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._turn.acquire()
        except TimeoutError:
            logger.warning("%s: closed while a call was still under way", self.name)
            await asyncio.to_thread(self._close)
            return
        try:
            await asyncio.to_thread(self._close)
        finally:
            self._turn.release()
