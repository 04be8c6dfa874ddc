"""Every inbound API's endpoint, as plain ASGI: the hot path, kept free of framework layers.

HTTP only: read and check the body, authenticate, let the API's adapter parse it, hand the request to
the request path, and write the answer in the adapter's format (JSON, or an SSE stream that ends
properly only when the upstream finished it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.api.http import RequestIds, caller_of, credentials_of, send_error, wanted_headers
from gateway.deferred.background_responses import BackgroundResponses
from gateway.errors import BodyTooLarge, GatewayError, InvalidRequest
from gateway.identity.auth import Authenticator
from gateway.inbound.adapter import InboundApi
from gateway.path.request_path import CLIENT_CLOSED, Exchange, RequestPath
from gateway.wire import Caller, ChatRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("gateway.api.inbound")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class InboundEndpoint:
    """One inbound API (its adapter) on the request path."""

    def __init__(
        self,
        api: InboundApi,
        path: RequestPath,
        auth: Authenticator,
        request_ids: RequestIds,
        max_body_bytes: int,
        background: BackgroundResponses | None = None,
    ) -> None:
        self.api = api
        self._background = background
        self._path = path
        self._auth = auth
        self._request_ids = request_ids
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        wanted = wanted_headers(scope["headers"])
        request_id = self._request_ids.of(wanted.get(b"x-request-id"))
        headers = [(b"x-request-id", request_id.encode())]
        api = self.api
        if scope["method"] != "POST":
            error = InvalidRequest(f"Method {scope['method']} is not allowed on {scope['path']}; use POST.")
            error.status = 405
            await send_error(send, error, headers, api.error_body(error))
            return
        try:
            principal = self._auth.principal(credentials_of(wanted))
            raw = await self._read_body(wanted.get(b"content-length"), receive)
            caller = caller_of(wanted, principal)
            request = await api.parse(raw, request_id, caller)
            if self._background is not None and request.inbound.background:
                queued = await self._background.enqueue(request, caller)
                headers += [*_JSON_HEADERS, (b"content-length", str(len(queued)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": queued})
                return
        except GatewayError as error:
            await send_error(send, error, headers, api.error_body(error))
            return
        await self._answer(request, caller, started, headers, receive, send)

    async def _read_body(self, declared: str | None, receive: Receive) -> bytes:
        if declared and declared.isdigit() and int(declared) > self._max_body_bytes:
            raise BodyTooLarge(f"The request body exceeds the limit of {self._max_body_bytes} bytes.")
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body  # type: ignore[no-any-return]
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("The client went away while sending the body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise BodyTooLarge(f"The request body exceeds the limit of {self._max_body_bytes} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    async def _answer(
        self,
        request: ChatRequest,
        caller: Caller,
        started: float,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
    ) -> None:
        watcher = DisconnectWatcher(receive)
        exchange: Exchange | None = None
        ended, reason = CLIENT_CLOSED, "client_disconnected"  # how it ended, unless recorded already
        sent: list[bytes] = []  # what a stream sent: a cut one is paid for what it produced
        try:
            try:
                exchange = await self._path.answer(request, caller, started)
            except GatewayError as error:
                await send_error(send, error, headers, self.api.error_body(error))
                return
            headers += _routing_headers(exchange)
            answer = exchange.answer
            if answer.stream is not None:
                await self._send_stream(exchange, started, headers, send, sent)
            elif answer.completion is not None:
                overhead = time.perf_counter() - started - answer.upstream_seconds
                headers.append((b"x-gateway-overhead-ms", f"{overhead * 1000:.3f}".encode()))
                try:
                    body = await self.api.body_of(request, answer.completion)
                except GatewayError as error:  # an answer this API cannot render (still paid for)
                    ended, reason = error.status, error.code or error.error_type
                    await send_error(send, error, headers, self.api.error_body(error))
                    return
                # Recorded before the answer leaves: a crash after this point cannot lose its spend.
                record = self._path.finish(exchange, ttfb_seconds=time.perf_counter() - started)
                if record.cost_usd is not None:
                    headers.append((b"x-gateway-cost-usd", f"{record.cost_usd:.8f}".encode()))
                saved = record.saved_usd
                if saved is not None:
                    headers.append((b"x-gateway-saved-usd", f"{saved:.8f}".encode()))
                if record.energy_wh is not None:
                    headers.append((b"x-gateway-energy-wh", f"{record.energy_wh:.6f}".encode()))
                headers.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS + headers})
                await send({"type": "http.response.body", "body": body})
        except asyncio.CancelledError:
            if not watcher.disconnected:
                raise
            owner = asyncio.current_task()
            if owner is not None:
                owner.uncancel()
            logger.info("client went away; request %s cancelled", request.request_id)
        except OSError:  # uvicorn's ClientDisconnected: the client left while we were sending
            logger.info("client went away while request %s was answered", request.request_id)
        except Exception:
            logger.exception("internal error in request %s", request.request_id)
            ended, reason = 500, "internal_error"
            failure = GatewayError(f"The gateway failed to handle request {request.request_id}.")
            with contextlib.suppress(Exception):  # if the response had started, nothing more can be said
                await send_error(send, failure, headers, self.api.error_body(failure))
        finally:
            watcher.stop()
            if exchange is not None:  # no-op when already recorded; else the client left or we failed
                self._path.finish(exchange, status=ended, error=reason, streamed=sent)

    async def _send_stream(
        self,
        exchange: Exchange,
        started: float,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        kept: list[bytes],
    ) -> None:
        answer = exchange.answer
        stream = answer.stream
        assert stream is not None
        overhead = time.perf_counter() - started - answer.upstream_seconds
        headers.append((b"x-gateway-overhead-ms", f"{overhead * 1000:.3f}".encode()))
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers})
        ttfb = time.perf_counter() - started
        outbound = self.api.stream_of(exchange.admitted.request, stream)
        try:
            async for block in outbound:
                kept.append(block)
                await send({"type": "http.response.body", "body": block, "more_body": True})
        except GatewayError as error:
            # Bytes were already sent: say so in-band and end without the API's end, never a silent
            # clean end.
            logger.warning("stream from %s broke: %s", answer.deployment, error.message)
            self._path.finish(
                exchange, status=error.status, error=error.code, ttfb_seconds=ttfb, streamed=kept
            )
            await send({"type": "http.response.body", "body": outbound.error(error)})
            return
        finally:
            await stream.aclose()
        # Recorded before the end leaves: a client that saw the end of its answer finds it in the ledger.
        self._path.finish(exchange, ttfb_seconds=ttfb, streamed=kept if exchange.log_bodies else None)
        await send({"type": "http.response.body", "body": await outbound.end()})


def _routing_headers(exchange: Exchange) -> list[tuple[bytes, bytes]]:
    answer = exchange.answer
    headers = [
        (b"x-gateway-route", answer.route.encode()),
        (b"x-gateway-rule", _header_safe(answer.rule)),
        (b"x-gateway-deployment", answer.deployment.encode()),
        (b"x-gateway-priority", exchange.routing.priority.encode()),
    ]
    if answer.queued_seconds:
        headers.append((b"x-gateway-queue-ms", f"{answer.queued_seconds * 1000:.1f}".encode()))
    if exchange.overload is not None:
        headers.append((b"x-gateway-admission", _header_safe(exchange.overload.text)))
    if answer.fallback:
        headers.append((b"x-gateway-fallback", _header_safe(answer.fallback)))
    if answer.cache is not None:
        headers.append((b"x-gateway-cache", answer.cache.encode()))
    if answer.cache_key is not None:
        headers.append((b"x-gateway-cache-key", answer.cache_key.encode()))
    if answer.similarity is not None:
        headers.append((b"x-gateway-cache-similarity", f"{answer.similarity:.4f}".encode()))
    if answer.verified is not None:
        headers.append((b"x-gateway-cache-verified", f"{answer.verified:.4f}".encode()))
    if answer.withheld is not None:
        headers.append((b"x-gateway-cache-withheld", _header_safe(answer.withheld)))
    return headers


def _header_safe(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ")[:300].encode("ascii", "replace")


class DisconnectWatcher:
    """Cancels the request's task when the client disconnects, so the upstream call stops too.

    Watching `receive` on a side task is the only way ASGI tells a handler that its client left
    while it waits on something else (the upstream). Most requests finish sooner than
    `WATCH_AFTER`; the side task is only started for those that do not, since creating and
    cancelling it on every request costs more than the rest of the endpoint."""

    WATCH_AFTER = 0.05

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._owner = asyncio.current_task()
        self._active = True
        self.disconnected = False
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER, self._start)

    def _start(self) -> None:
        if self._active:
            self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if self._active and self._owner is not None:
                    self.disconnected = True
                    self._owner.cancel()
                return

    def stop(self) -> None:
        self._active = False
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
