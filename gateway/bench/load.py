"""A closed-loop HTTP/1.1 load generator, lean enough not to be the bottleneck on one shared core.

Each worker keeps one keep-alive connection and sends pre-built request bytes; responses are parsed
by httptools (C) on a bare asyncio Protocol, so the client costs a few microseconds per request.
A phase sends one request over and over, or takes each request from a `RequestSource` (a different
body per request, built ahead); it can also count the values of one response header (the cache's).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson

PROMPT = "Say hello to the benchmark"
# The next request's bytes, each call; shared by a phase's workers (the event loop runs one at a time).
RequestSource = Callable[[], bytes]
# What a counted header's value is recorded as when a response does not carry it.
NO_HEADER = "none"
# How long a phase waits for in-flight requests after its window closed before giving up on them.
DRAIN_SECONDS = 5.0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The load generator's event loop: uvloop's when installed (cheaper per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class ProtocolError(Exception):
    """The server closed the connection or sent something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where chat requests go and what they say: the same body for every target but `model`."""

    host: str
    port: int
    path: str
    model: str
    api_key: str | None = None

    def request(self, *, stream: bool) -> bytes:
        body: dict[str, object] = {"model": self.model, "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return self.encode(body)

    def encode(self, body: Mapping[str, Any]) -> bytes:
        """A whole HTTP/1.1 request for this body (sent as it is: `model` is the caller's)."""
        payload = orjson.dumps(body)
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        if self.api_key:
            lines.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `send` resolves to (status, body) when the whole response arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep_body: bool) -> None:
        self._loop = loop
        self._keep_body = keep_body
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._parts: list[bytes] = []
        self.closed = False
        # The counted header's value in the last response (only `_HeaderConnection` sets it).
        self.header_value = NO_HEADER

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"bad response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ProtocolError("connection closed mid-response"))

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._parts.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        body = b"".join(self._parts)
        self._parts.clear()
        if not self._parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.closed or self._transport is None:
            raise ProtocolError("connection is closed")
        waiter = self._loop.create_future()
        self._waiter = waiter
        self.header_value = NO_HEADER
        self._transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class _HeaderConnection(_Connection):
    """A connection that also keeps one response header's value. httptools calls `on_header` only on a
    protocol that has it, so connections that count nothing do not pay for a call per header."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep_body: bool, header: bytes) -> None:
        super().__init__(loop, keep_body)
        self._header = header.lower()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == self._header:
            self.header_value = value.decode("latin-1")


async def _connect(endpoint: Endpoint, keep_body: bool, header: bytes | None = None) -> _Connection:
    loop = asyncio.get_running_loop()

    def protocol() -> _Connection:
        if header is None:
            return _Connection(loop, keep_body)
        return _HeaderConnection(loop, keep_body, header)

    _, connection = await loop.create_connection(protocol, endpoint.host, endpoint.port)
    return connection


async def request_once(endpoint: Endpoint, request: bytes) -> tuple[int, bytes]:
    """One request on a fresh connection (start-up probes and smoke checks)."""
    connection = await _connect(endpoint, keep_body=True)
    try:
        return await connection.send(request)
    finally:
        connection.close()


async def header_once(endpoint: Endpoint, request: bytes, header: bytes) -> tuple[int, bytes, str]:
    """One request on a fresh connection: its status, body and the value of `header`."""
    connection = await _connect(endpoint, keep_body=True, header=header)
    try:
        status, body = await connection.send(request)
        return status, body, connection.header_value
    finally:
        connection.close()


def repeated(request: bytes) -> RequestSource:
    """The same request every time."""
    return itertools.repeat(request).__next__


# How a stream that finished properly ends: chat's, Anthropic's Messages' and the Responses API's.
STREAM_ENDS = (b"data: [DONE]", b"event: message_stop", b"event: response.completed")


def stream_verdict(body: bytes) -> tuple[bool, bool]:
    """(ended as its API ends a finished stream, carried a usage object) for one SSE body."""
    events = [event.strip() for event in body.replace(b"\r\n", b"\n").split(b"\n\n") if event.strip()]
    complete = bool(events) and events[-1].startswith(STREAM_ENDS)
    for event in reversed(events[-4:]):
        start = event.find(b"data:")
        if b'"usage"' not in event or start < 0:
            continue
        try:
            chunk = orjson.loads(event[start + 5 :])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        response = chunk.get("response")
        holder: dict[str, Any] = response if isinstance(response, dict) else chunk
        usage = holder.get("usage")
        if isinstance(usage, dict) and usage:
            return complete, True
    return complete, False


@dataclass(slots=True)
class PhaseResult:
    """What one phase measured; rates are over the measurement window only (warm-up excluded)."""

    clients: int
    stream: bool
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    missing_usage: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    # CPU seconds (or any counter) spent during the window, per meter name.
    meters: dict[str, float] = field(default_factory=dict)
    # The counted header's values over the requests answered 200 in the window (empty: nothing counted).
    header_values: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_ns:
            return None
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


@dataclass(slots=True)
class _State:
    recording: bool = False
    stopped: bool = False


async def _worker(
    endpoint: Endpoint,
    requests: RequestSource,
    check_stream: bool,
    header: bytes | None,
    state: _State,
    result: PhaseResult,
) -> None:
    connection: _Connection | None = None
    clock = time.perf_counter_ns
    try:
        while not state.stopped:
            if connection is None or connection.closed:
                try:
                    connection = await _connect(endpoint, keep_body=check_stream, header=header)
                except OSError:
                    if state.recording:
                        result.errors += 1
                    await asyncio.sleep(0.01)
                    continue
            request = requests()
            started = clock()
            try:
                status, body = await connection.send(request)
            except ProtocolError:
                if state.recording:
                    result.errors += 1
                connection = None
                continue
            elapsed = clock() - started
            if not state.recording:
                continue
            if status != 200:
                result.errors += 1
                continue
            if check_stream:
                complete, usage = stream_verdict(body)
                if not complete:
                    result.errors += 1
                    continue
                if not usage:
                    result.missing_usage += 1
            if header is not None:
                result.header_values[connection.header_value] += 1
            result.requests += 1
            result.latencies_ns.append(elapsed)
    finally:
        if connection is not None:
            connection.close()


async def run_phase(
    endpoint: Endpoint,
    *,
    clients: int,
    stream: bool,
    warmup: float,
    duration: float,
    meters: Mapping[str, Callable[[], float]],
    requests: RequestSource | None = None,
    count_header: bytes | None = None,
) -> PhaseResult:
    """Run `clients` closed-loop workers; record only the `duration` window after `warmup`.

    `meters` (e.g. a process's CPU seconds) are read at both ends of the window. Requests come from
    `requests`, or are the endpoint's one request; with `count_header`, that response header's
    values are counted.
    """
    result = PhaseResult(clients=clients, stream=stream)
    state = _State()
    source = requests if requests is not None else repeated(endpoint.request(stream=stream))
    tasks = [
        asyncio.create_task(_worker(endpoint, source, stream, count_header, state, result))
        for _ in range(clients)
    ]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the client allocates no cycles worth collecting; pauses would only add noise
    try:
        await asyncio.sleep(warmup)
        before = {name: meter() for name, meter in meters.items()}
        state.recording = True
        started = time.perf_counter()
        await asyncio.sleep(duration)
        state.recording = False
        result.seconds = time.perf_counter() - started
        result.meters = {name: meter() - before[name] for name, meter in meters.items()}
        state.stopped = True
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        for task in pending:
            task.cancel()
            result.errors += 1  # a request that never finished
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome  # a bug in the client, not a measurement
    finally:
        for task in tasks:
            task.cancel()
        if gc_was_enabled:
            gc.enable()
    return result
