"""Anthropic deployments: a Messages API request goes to Anthropic as the client sent it (only `model`
replaced) and its bytes come back untouched, streams included, on the aiohttp fast path with no litellm;
every other request (chat completions, …) goes through litellm's translation.

The usage is read from the answer (`usage` of a message; `message_start` and `message_delta` of a
stream): input tokens are Anthropic's `input_tokens` plus its cache reads and writes, the reads also
counted as cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.config import Deployment
from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import Provider
from gateway.providers.openai_compat import translate_transport_error, upstream_status_error
from gateway.wire import ChatRequest, ChatStream, Completion, Deadline, Usage

ANTHROPIC_API = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
# The inbound API whose requests an Anthropic deployment takes as they are.
MESSAGES = "messages"
# What ends a finished stream: held back by `NativeMessagesStream` for the endpoint to send last.
MESSAGE_STOP = b"event: message_stop"


def native_body(request: ChatRequest) -> dict[str, Any]:
    """The client's own Messages body (the adapter keeps it in `inbound.body`)."""
    body = getattr(request.inbound, "body", None)
    if not isinstance(body, dict):
        raise AssertionError("a messages request carries the client's body")
    return body


def usage_of_message(usage: Mapping[str, Any]) -> Usage:
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    completion = int(usage.get("output_tokens") or 0)
    details = {"prompt_tokens_details": {"cached_tokens": read}} if read else {}
    return Usage(prompt, completion, prompt + completion, details)


class AnthropicMessagesCalls:
    """Messages API requests to one Anthropic deployment, passed through."""

    def __init__(self, deployment: Deployment, session: aiohttp.ClientSession, api_key: str | None) -> None:
        self._name = deployment.name
        self._model = deployment.model.removeprefix("anthropic/")
        base = (deployment.api_base or ANTHROPIC_API).rstrip("/").removesuffix("/v1")
        self._url = f"{base}/v1/messages"
        self._session = session
        self._headers = {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            "x-api-key": api_key or "",
        }
        timeouts = deployment.timeouts
        self._limits = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.first_byte
        )

    def _payload(self, request: ChatRequest, stream: bool) -> bytes:
        body = dict(native_body(request))
        body["model"] = self._model
        if stream:
            body["stream"] = True
        cap = request.body.get("max_tokens")
        if isinstance(cap, int) and cap < body.get("max_tokens", cap + 1):
            body["max_tokens"] = cap  # a rule's override, as on the translated path
        return orjson.dumps(body)

    def _timeout(self, deadline: Deadline) -> aiohttp.ClientTimeout:
        remaining = max(deadline.remaining(), 0.001)
        limits = self._limits
        if limits.total is not None and remaining >= limits.total:
            return limits
        return aiohttp.ClientTimeout(
            total=remaining,
            sock_connect=min(limits.sock_connect or remaining, remaining),
            sock_read=min(limits.sock_read or remaining, remaining),
        )

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        started = time.perf_counter()
        try:
            async with self._session.post(
                self._url,
                data=self._payload(request, False),
                headers=self._headers,
                timeout=self._timeout(deadline),
            ) as response:
                data = await response.read()
                if response.status != 200:
                    raise upstream_status_error(self._name, response.status, data, response.headers)
        except (GatewayError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise translate_transport_error(self._name, exc) from exc
        try:
            usage = orjson.loads(data).get("usage")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise UpstreamError(f"Deployment '{self._name}' returned a malformed response.") from exc
        return Completion(
            body=data,
            usage=usage_of_message(usage) if isinstance(usage, dict) else None,
            upstream_seconds=time.perf_counter() - started,
            native=True,
        )

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> NativeMessagesStream:
        started = time.perf_counter()
        try:
            response = await self._session.post(
                self._url,
                data=self._payload(request, True),
                headers=self._headers,
                timeout=self._timeout(deadline),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate_transport_error(self._name, exc) from exc
        if response.status != 200:
            data = await response.read()
            response.release()
            raise upstream_status_error(self._name, response.status, data, response.headers)
        stream = NativeMessagesStream(self._name, response)
        try:
            await stream.wait_first_event()
        except BaseException:
            await stream.aclose()
            raise
        stream.first_byte_seconds = time.perf_counter() - started
        return stream


class NativeMessagesStream:
    """Anthropic's events as they came, whole events at a time, but `message_stop` (the endpoint sends
    the end); the usage read from `message_start` and `message_delta` on the way."""

    native = True

    def __init__(self, deployment: str, response: aiohttp.ClientResponse) -> None:
        self._deployment = deployment
        self._response = response
        self._buffer = b""
        self._pending: list[bytes] = []
        self._finished = False
        self._ended = False
        self._usage: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.first_byte_seconds = 0.0

    async def wait_first_event(self) -> None:
        while not self._pending and not self._ended:
            await self._read()
        if not self._pending and not self._finished:
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
        kept = [event for event in complete.split(b"\n\n") if event and self._watch(event)]
        if kept:
            self._pending.append(b"\n\n".join(kept) + b"\n\n")

    def _watch(self, event: bytes) -> bool:
        """Read what an event says of usage and the end; False for `message_stop` (held back)."""
        if event.startswith(MESSAGE_STOP):
            self._finished = True
            return False
        if b"event: error" in event[:16]:
            raise UpstreamError(f"Deployment '{self._deployment}' sent an error in the middle of the stream.")
        if b'"usage"' in event:
            start = event.find(b"data:")
            try:
                data = orjson.loads(event[start + 5 :]) if start >= 0 else None
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                holder = data.get("message") if data.get("type") == "message_start" else data
                usage = holder.get("usage") if isinstance(holder, dict) else None
                if isinstance(usage, dict):
                    self._usage.update({key: value for key, value in usage.items() if value is not None})
                    self.usage = usage_of_message(self._usage)
        return True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        while True:
            while self._pending:
                yield self._pending.pop(0)
            if self._finished or self._ended:
                break
            await self._read()
        if not self._finished:
            raise UpstreamError(f"Deployment '{self._deployment}' broke the stream before it ended.")

    async def aclose(self) -> None:
        self._response.release()


class AnthropicProvider:
    """An Anthropic deployment: Messages requests passed through, the rest translated by litellm."""

    def __init__(self, native: AnthropicMessagesCalls, translated: Provider) -> None:
        self.deployment = translated.deployment
        self._native = native
        self._translated = translated

    @property
    def available(self) -> bool:
        return self._translated.available

    @property
    def unavailable_reason(self) -> str:
        return self._translated.unavailable_reason

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        if request.api == MESSAGES:
            return await self._native.complete(request, deadline)
        return await self._translated.complete(request, deadline)

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream:
        if request.api == MESSAGES:
            return await self._native.open_stream(request, deadline)
        return await self._translated.open_stream(request, deadline)

    async def aclose(self) -> None:
        await self._translated.aclose()
