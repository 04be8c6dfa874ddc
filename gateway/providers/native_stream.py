"""Calls in an inbound API an upstream speaks itself (Anthropic's Messages, OpenAI's Responses), on the
aiohttp fast path: a whole answer's bytes (`post_for_body`), or the upstream's own event stream
(`open_event_stream`), passed on whole events at a time. What each event says of usage and the end is
read on the way by that API's `EventWatcher`, and the event that ends the stream is held back
(`ending`) for the endpoint to send once the answer is recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.openai_compat import translate_transport_error, upstream_status_error
from gateway.wire import ChatRequest, Usage, native_body_of


class EventWatcher(Protocol):
    usage: Usage | None

    def ends(self, event: bytes) -> bool:
        """Whether the event ends a finished stream (it is then held back); raises UpstreamError for
        an event that says the upstream failed."""
        ...


def event_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one SSE event's `data:` line, None when it has none."""
    start = event.find(b"data:")
    if start < 0:
        return None
    try:
        data = orjson.loads(event[start + 5 :])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class NativeEventStream:
    native = True

    def __init__(self, deployment: str, response: aiohttp.ClientResponse, watcher: EventWatcher) -> None:
        self._deployment = deployment
        self._response = response
        self._watcher = watcher
        self._buffer = b""
        self._pending: list[bytes] = []
        self._ended = False
        self.ending = b""
        self.first_byte_seconds = 0.0

    @property
    def usage(self) -> Usage | None:
        return self._watcher.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._watcher.usage = value

    async def wait_first_event(self) -> None:
        while not self._pending and not self._ended and not self.ending:
            await self._read()
        if not self._pending and not self.ending:
            raise UpstreamError(f"Deployment '{self._deployment}' closed the stream before sending data.")

    async def _read(self) -> None:
        try:
            chunk = await self._response.content.readany()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate_transport_error(self._deployment, exc, midstream=True) from exc
        if not chunk:
            self._ended = True
            return
        data = self._buffer + chunk.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return
        complete, self._buffer = data[: end + 2], data[end + 2 :]
        kept = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if self._watcher.ends(event):
                self.ending = event + b"\n\n"
            else:
                kept.append(event)
        if kept:
            self._pending.append(b"\n\n".join(kept) + b"\n\n")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        while True:
            while self._pending:
                yield self._pending.pop(0)
            if self.ending or self._ended:
                break
            await self._read()
        if not self.ending:
            raise UpstreamError(f"Deployment '{self._deployment}' broke the stream before it ended.")

    async def aclose(self) -> None:
        self._response.release()


async def post_for_body(
    session: aiohttp.ClientSession,
    deployment: str,
    url: str,
    payload: bytes,
    headers: Mapping[str, str],
    limits: aiohttp.ClientTimeout,
) -> bytes:
    """The whole answer's bytes; the upstream's errors as the gateway's."""
    try:
        async with session.post(url, data=payload, headers=headers, timeout=limits) as response:
            data = await response.read()
            if response.status != 200:
                raise upstream_status_error(deployment, response.status, data, response.headers)
            return data
    except (GatewayError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise translate_transport_error(deployment, exc) from exc


async def open_event_stream(
    session: aiohttp.ClientSession,
    deployment: str,
    url: str,
    payload: bytes,
    headers: Mapping[str, str],
    limits: aiohttp.ClientTimeout,
    watcher: EventWatcher,
) -> NativeEventStream:
    """The upstream's event stream, once its first event has come."""
    started = time.perf_counter()
    try:
        response = await session.post(url, data=payload, headers=headers, timeout=limits)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise translate_transport_error(deployment, exc) from exc
    if response.status != 200:
        data = await response.read()
        response.release()
        raise upstream_status_error(deployment, response.status, data, response.headers)
    stream = NativeEventStream(deployment, response, watcher)
    try:
        await stream.wait_first_event()
    except BaseException:
        await stream.aclose()
        raise
    stream.first_byte_seconds = time.perf_counter() - started
    return stream


def json_usage(deployment: str, data: bytes) -> Mapping[str, Any] | None:
    """The `usage` object of a whole answer; UpstreamError when the answer is not a JSON object."""
    try:
        usage = orjson.loads(data).get("usage")
    except (orjson.JSONDecodeError, AttributeError) as exc:
        raise UpstreamError(f"Deployment '{deployment}' returned a malformed response.") from exc
    return usage if isinstance(usage, dict) else None


def native_payload(request: ChatRequest, model: str, *, stream: bool, max_tokens_field: str) -> bytes:
    """What an upstream that speaks the request's API is sent: the body its adapter kept
    (`wire.native_body_of`) with the deployment's model, and the rule's cap on the answer's length
    where it is lower than the client's (as on the translated path, where it is chat's `max_tokens`)."""
    body = dict(native_body_of(request))
    body["model"] = model
    if stream:
        body["stream"] = True
    cap = request.body.get("max_tokens")
    asked = body.get(max_tokens_field)
    if isinstance(cap, int) and (not isinstance(asked, int) or cap < asked):
        body[max_tokens_field] = cap
    return orjson.dumps(body)
