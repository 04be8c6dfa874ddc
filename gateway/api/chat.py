"""`POST /v1/chat/completions` as a plain ASGI endpoint: the hot path, kept free of framework layers.

HTTP only: read and check the body, authenticate, hand the request to the pipeline, and write the
answer (JSON, or an SSE stream that ends with `[DONE]` only when the upstream finished it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.identity.auth import Authenticator
from gateway.api.http import caller_of, header_value, request_id_of, send_error
from gateway.errors import BodyTooLarge, GatewayError, InvalidRequest
from gateway.pipeline import CLIENT_CLOSED, Answer, Caller, ChatPipeline
from gateway.providers.base import ChatRequest
from gateway.wire import parse_chat_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("gateway.api.chat")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"


class ChatCompletionsEndpoint:
    def __init__(self, pipeline: ChatPipeline, auth: Authenticator, max_body_bytes: int) -> None:
        self._pipeline = pipeline
        self._auth = auth
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        headers = [(b"x-request-id", request_id.encode())]
        if scope["method"] != "POST":
            error = InvalidRequest(f"Method {scope['method']} is not allowed on {scope['path']}; use POST.")
            error.status = 405
            await send_error(send, error, headers)
            return
        try:
            principal = self._auth.principal(header_value(scope, b"authorization"))
            raw = await self._read_body(scope, receive)
            body, validated = parse_chat_request(raw)
            request = ChatRequest(
                body=body,
                request_id=request_id,
                stream=bool(validated.stream),
                include_usage=bool(validated.stream_options and validated.stream_options.include_usage),
            )
        except GatewayError as error:
            await send_error(send, error, headers)
            return
        await self._answer(request, caller_of(scope, principal), started, headers, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = header_value(scope, b"content-length")
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
        answer: Answer | None = None
        ended, reason = CLIENT_CLOSED, "client_disconnected"  # how it ended, unless recorded already
        sent: list[bytes] = []  # what a stream sent: a cut one is paid for what it produced
        try:
            try:
                answer = await self._pipeline.answer(request, caller, started)
            except GatewayError as error:
                await send_error(send, error, headers)
                return
            headers += _routing_headers(answer)
            if answer.stream is not None:
                await self._send_stream(answer, started, headers, send, sent)
            elif answer.completion is not None:
                overhead = time.perf_counter() - started - answer.upstream_seconds
                headers.append((b"x-gateway-overhead-ms", f"{overhead * 1000:.3f}".encode()))
                body = answer.completion.body
                headers.append((b"content-length", str(len(body)).encode()))
                # Recorded before the answer leaves: a crash after this point cannot lose its spend.
                self._pipeline.finish(answer, ttfb_seconds=time.perf_counter() - started)
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
                await send_error(send, failure, headers)
        finally:
            watcher.stop()
            if answer is not None:  # no-op when already recorded; else the client left or we failed
                self._pipeline.finish(answer, status=ended, error=reason, streamed=sent)

    async def _send_stream(
        self,
        answer: Answer,
        started: float,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        kept: list[bytes],
    ) -> None:
        stream = answer.stream
        assert stream is not None
        overhead = time.perf_counter() - started - answer.upstream_seconds
        headers.append((b"x-gateway-overhead-ms", f"{overhead * 1000:.3f}".encode()))
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers})
        ttfb = time.perf_counter() - started
        try:
            async for block in stream:
                kept.append(block)
                await send({"type": "http.response.body", "body": block, "more_body": True})
        except GatewayError as error:
            # Bytes were already sent: say so in-band and end without [DONE], never a silent clean end.
            logger.warning("stream from %s broke: %s", answer.deployment, error.message)
            self._pipeline.finish(
                answer, status=error.status, error=error.code, ttfb_seconds=ttfb, streamed=kept
            )
            await send({"type": "http.response.body", "body": b"data: " + error.to_json() + b"\n\n"})
            return
        finally:
            await stream.aclose()
        # Recorded before [DONE] leaves: a client that saw the end of its answer finds it in the ledger.
        self._pipeline.finish(answer, ttfb_seconds=ttfb, streamed=kept if answer.log_bodies else None)
        await send({"type": "http.response.body", "body": _DONE})


def _routing_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    headers = [
        *_spend_headers(answer),
        (b"x-gateway-route", answer.route.encode()),
        (b"x-gateway-rule", _header_safe(answer.rule)),
        (b"x-gateway-deployment", answer.deployment.encode()),
    ]
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
    return headers


def _spend_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    spend = answer.spend
    if spend is None:
        return []
    headers = []
    if spend.cost_usd is not None:
        headers.append((b"x-gateway-cost-usd", f"{spend.cost_usd:.8f}".encode()))
    if spend.saved_usd is not None:
        headers.append((b"x-gateway-saved-usd", f"{spend.saved_usd:.8f}".encode()))
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
