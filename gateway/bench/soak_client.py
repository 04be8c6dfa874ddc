"""The soak's open-loop client: keep-alive connections to the gateway and the verdict on each answer.

Requests are sent at their scheduled times whether or not earlier ones finished, so each takes an
idle connection or opens one (up to a limit, then it waits for one: that wait shows as client lag,
not as gateway latency). Responses are parsed by httptools as in gateway.bench.load, plus the
gateway's `x-gateway-overhead-ms` header.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.bench.load import Endpoint, ProtocolError
from gateway.bench.load import _Connection as _LoadConnection

OVERHEAD_HEADER = b"x-gateway-overhead-ms"
CONNECTION_ERROR = "connection error"
TIMEOUT = "timeout"
UNFINISHED = "unfinished at the end"
NO_DONE = "stream without [DONE]"
NO_USAGE = "answer without usage"


class _Connection(_LoadConnection):
    """A load connection that also keeps the overhead header of the response in progress."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, keep_body=True)
        self.overhead_ms: float | None = None

    def on_message_begin(self) -> None:
        self.overhead_ms = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == OVERHEAD_HEADER:
            try:
                self.overhead_ms = float(value)
            except ValueError:
                self.overhead_ms = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One answered (or failed) request: service time from the first byte sent, and what was wrong."""

    lag_ns: int
    latency_ns: int
    overhead_ms: float | None
    completion_tokens: int
    error: str | None


def request_bytes(endpoint: Endpoint, body: bytes) -> bytes:
    head = (
        f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if endpoint.api_key:
        head += f"Authorization: Bearer {endpoint.api_key}\r\n"
    return (head + "\r\n").encode() + body


def _usage_tokens(usage: Any) -> int | None:
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return None


def verdict(status: int, body: bytes, stream: bool) -> tuple[str | None, int]:
    """(what is wrong with an answer or None, its completion tokens from usage)."""
    if status != 200:
        return f"HTTP {status}", 0
    if not stream:
        try:
            tokens = _usage_tokens(orjson.loads(body).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            tokens = None
        return (None, tokens) if tokens is not None else (NO_USAGE, 0)
    events = [event.strip() for event in body.replace(b"\r\n", b"\n").split(b"\n\n") if event.strip()]
    if not events or events[-1] != b"data: [DONE]":
        return NO_DONE, 0
    for event in reversed(events[-4:]):
        if event.startswith(b"data: {") and b'"usage"' in event:
            try:
                tokens = _usage_tokens(orjson.loads(event[6:]).get("usage"))
            except orjson.JSONDecodeError:
                continue
            if tokens is not None:
                return None, tokens
    return NO_USAGE, 0


class Pool:
    """Keep-alive connections to one endpoint, at most `limit` busy at once."""

    def __init__(self, endpoint: Endpoint, limit: int, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self.opened = 0

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Connection(loop), self.endpoint.host, self.endpoint.port
        )
        self.opened += 1
        return connection

    async def send(self, body: bytes, stream: bool, due_ns: int) -> Outcome:
        """Send one request (`due_ns`: when it was scheduled, perf_counter_ns) and judge the answer."""
        payload = request_bytes(self.endpoint, body)
        async with self._slots:
            sent = time.perf_counter_ns()
            lag = max(0, sent - due_ns)
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    connection = await self._connection()
                    status, answer = await connection.send(payload)
            except TimeoutError:
                if connection is not None:
                    connection.close()
                return Outcome(lag, time.perf_counter_ns() - sent, None, 0, TIMEOUT)
            except (OSError, ProtocolError):
                if connection is not None:
                    connection.close()
                return Outcome(lag, time.perf_counter_ns() - sent, None, 0, CONNECTION_ERROR)
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            latency = time.perf_counter_ns() - sent
            overhead = connection.overhead_ms
            if not connection.closed:
                self._idle.append(connection)
        error, tokens = verdict(status, answer, stream)
        return Outcome(lag, latency, overhead, tokens, error)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
