"""The fast path: OpenAI-compatible upstreams (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, Groq, …).

One pooled aiohttp session serves every deployment. The request body is forwarded with only
`model` replaced (and stream usage asked for); response bytes go back to the client as they came,
and usage is read from the body or the final stream chunk without re-serialising anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.config import Deployment
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.tokens import TokenCounter
from gateway.wire import ChatRequest, Completion, Deadline, Usage

_DONE = b"data: [DONE]"
# [DONE] where it starts an event (the same text inside a chunk's content is not the end).
_DONE_EVENT = b"\n\n" + _DONE


class OpenAICompatProvider:
    def __init__(
        self,
        deployment: Deployment,
        session: aiohttp.ClientSession,
        environ: Mapping[str, str],
        tokens: TokenCounter,
        *,
        api_base: str | None = None,
    ) -> None:
        self.deployment = deployment
        self._session = session
        self._tokens = tokens
        self._limits = limits_of(deployment)
        base = (api_base or deployment.api_base or "").rstrip("/")
        self.api_base = base
        query = f"?api-version={deployment.api_version}" if deployment.api_version else ""
        self._url = f"{base}/chat/completions{query}"
        # Requests of an inbound API the upstream serves itself (its body is that API's, not chat's).
        self._native_urls = {"embeddings": f"{base}/embeddings{query}"}
        self._headers = {"Content-Type": "application/json"}
        self._missing_key: str | None = None
        if deployment.api_key_env:
            key = environ.get(deployment.api_key_env, "")
            if not key:
                self._missing_key = deployment.api_key_env
            elif deployment.auth_header == "api-key":
                self._headers["api-key"] = key
            else:
                self._headers["Authorization"] = f"Bearer {key}"
        if not base:
            self._missing_key = self._missing_key or "api_base"

    @property
    def available(self) -> bool:
        return self._missing_key is None

    @property
    def headers(self) -> dict[str, str]:
        """What every request to the upstream carries (its credentials among them)."""
        return self._headers

    @property
    def unavailable_reason(self) -> str:
        if self._missing_key == "api_base":
            return "no api_base configured"
        return f"{self._missing_key} is not set" if self._missing_key else ""

    def _payload(self, request: ChatRequest) -> bytes:
        body = dict(request.body)
        body["model"] = self.deployment.model
        if request.stream and self.deployment.stream_usage:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    def _timeout(self, deadline: Deadline) -> aiohttp.ClientTimeout:
        return clipped(self._limits, deadline)

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        started = time.perf_counter()
        try:
            url = self._native_urls.get(request.api, self._url)
            async with self._session.post(
                url, data=self._payload(request), headers=self._headers, timeout=self._timeout(deadline)
            ) as response:
                data = await response.read()
                if response.status != 200:
                    raise upstream_status_error(self.deployment.name, response.status, data, response.headers)
        except (GatewayError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise translate_transport_error(self.deployment.name, exc) from exc
        try:
            parsed = orjson.loads(data)
            usage = parsed.get("usage")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise UpstreamError(
                f"Deployment '{self.deployment.name}' returned a malformed response."
            ) from exc
        return Completion(
            body=data,
            usage=Usage.from_openai(usage) if isinstance(usage, dict) else None,
            upstream_seconds=time.perf_counter() - started,
        )

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> OpenAIStream:
        started = time.perf_counter()
        try:
            response = await self._session.post(
                self._url, data=self._payload(request), headers=self._headers, timeout=self._timeout(deadline)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate_transport_error(self.deployment.name, exc) from exc
        stream = OpenAIStream(self.deployment.name, response, request, self._tokens)
        try:
            if response.status != 200:
                data = await response.read()
                raise upstream_status_error(self.deployment.name, response.status, data, response.headers)
            await stream.wait_first_event()
        except BaseException:
            await stream.aclose()
            raise
        stream.first_byte_seconds = time.perf_counter() - started
        return stream

    async def aclose(self) -> None:
        """The session belongs to the app, which closes it."""


class OpenAIStream:
    """Frames upstream bytes into SSE events, watches for usage and the end, and passes bytes on."""

    native = False
    ending = b""

    def __init__(
        self, deployment: str, response: aiohttp.ClientResponse, request: ChatRequest, tokens: TokenCounter
    ) -> None:
        self._deployment = deployment
        self._response = response
        self._request = request
        self._include_usage = request.include_usage
        self._tokens = tokens
        self._buffer = b""
        self._pending: list[bytes] = []
        self._passed: list[bytes] = []
        self._done = False
        self.usage: Usage | None = None
        self.first_byte_seconds = 0.0

    async def wait_first_event(self) -> None:
        while not self._pending and not self._done:
            if not await self._read():
                raise UpstreamError(f"Deployment '{self._deployment}' closed the stream before sending data.")

    async def _read(self) -> bool:
        """Read one upstream chunk into complete events; False when the upstream ended the body."""
        try:
            chunk = await self._response.content.readany()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate_transport_error(self._deployment, exc, midstream=True) from exc
        if not chunk:
            return False
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self._buffer + chunk if self._buffer else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return True
        complete, self._buffer = data[: end + 2], data[end + 2 :]
        done = 0 if complete.startswith(_DONE) else complete.find(_DONE_EVENT)
        if done >= 0:
            self._done = True
            complete = complete[: done + 2 if done else 0]  # whole events before the [DONE] event
        if b'"usage":' in complete or b'"usage": ' in complete:
            complete = self._take_usage_events(complete)
        if complete:
            self._pass(complete)
        return True

    def _take_usage_events(self, block: bytes) -> bytes:
        """Record the usage of the events in `block` that carry one; the block without the usage-only
        events the client did not ask for. Only those events are parsed, found by position."""
        kept, start = [], 0
        while True:
            found = _usage_object(block, start)
            if found < 0:
                break
            begin = block.rfind(b"\n\n", 0, found)
            begin = begin + 2 if begin >= 0 else 0
            end = block.find(b"\n\n", found)
            end = end + 2 if end >= 0 else len(block)
            if not self._take_usage(block[begin:end].rstrip(b"\n")):
                kept.append(block[start:begin])
                start = end
                continue
            kept.append(block[start:end])
            start = end
        kept.append(block[start:])
        return b"".join(kept)

    def _pass(self, block: bytes) -> None:
        self._pending.append(block)
        if self.usage is None:
            # Kept (the same bytes the client gets) to count the answer should no usage come.
            self._passed.append(block)
        elif self._passed:
            self._passed.clear()

    def _take_usage(self, event: bytes) -> bool:
        """Record the usage in this event; False when the event should not reach the client."""
        try:
            chunk = orjson.loads(event[event.index(b"{") :])
        except (ValueError, orjson.JSONDecodeError):
            return True
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if isinstance(usage, dict):
            self.usage = Usage.from_openai(usage)
            if not chunk.get("choices") and not self._include_usage:
                return False
        return True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        while True:
            if self._pending:
                pending, self._pending = self._pending, []
                for block in pending:
                    yield block
            if self._done:
                if self.usage is None:
                    estimate = self._estimate_usage()
                    if estimate:
                        yield estimate
                return
            if not await self._read():
                raise UpstreamError(f"Deployment '{self._deployment}' ended the stream without finishing it.")

    def _estimate_usage(self) -> bytes:
        """The upstream sent no usage: count it (content chunks ≈ completion tokens) and, when the
        client asked for usage, build the final usage chunk it would have sent."""
        prompt = self._tokens.count_messages(self._request.body.get("messages") or ())
        events = [event for block in self._passed for event in block.split(b"\n\n") if event]
        completion = sum(1 for event in events if _carries_content(event))
        self.usage = Usage(prompt, completion, prompt + completion, estimated=True)
        if not self._include_usage:
            return b""
        last_event = events[-1] if events else b""
        try:
            last = orjson.loads(last_event[last_event.index(b"{") :])
        except (ValueError, orjson.JSONDecodeError):
            last = {}
        chunk = {
            "id": last.get("id", self._request.request_id),
            "object": "chat.completion.chunk",
            "created": last.get("created", int(time.time())),
            "model": last.get("model", ""),
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "estimated": True,
            },
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def aclose(self) -> None:
        # A finished body can return its connection to the pool; an unfinished one must be dropped.
        if self._done:
            self._response.release()
        else:
            self._response.close()


def _usage_object(block: bytes, start: int) -> int:
    """Where the next `"usage": {…}` of a block is (a `"usage": null` is no usage), or -1."""
    tight, spaced = block.find(b'"usage":{', start), block.find(b'"usage": {', start)
    if tight < 0:
        return spaced
    return tight if spaced < 0 else min(tight, spaced)


def _carries_content(event: bytes) -> bool:
    """A cheap test for a chunk with non-empty text, without parsing it."""
    if b'"content":"' in event:
        return b'"content":""' not in event
    if b'"content": "' in event:
        return b'"content": ""' not in event
    return False


def limits_of(deployment: Deployment) -> aiohttp.ClientTimeout:
    """A deployment's own timeouts, as aiohttp takes them."""
    timeouts = deployment.timeouts
    return aiohttp.ClientTimeout(
        total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.first_byte
    )


def clipped(limits: aiohttp.ClientTimeout, deadline: Deadline) -> aiohttp.ClientTimeout:
    """A deployment's timeouts, clipped to the request's deadline only when that is nearer (building a
    ClientTimeout per request is measurable on the hot path)."""
    remaining = deadline.remaining()
    if limits.total is not None and remaining >= limits.total:
        return limits
    remaining = max(remaining, 0.001)
    return aiohttp.ClientTimeout(
        total=remaining,
        sock_connect=min(limits.sock_connect or remaining, remaining),
        sock_read=min(limits.sock_read or remaining, remaining),
    )


def upstream_status_error(
    deployment: str, status: int, body: bytes, headers: Mapping[str, str]
) -> GatewayError:
    message = _upstream_message(body)
    if status == 429:
        error = UpstreamRateLimited(
            f"Deployment '{deployment}' is rate limited{': ' + message if message else ''}.",
            retry_after=_retry_after(headers),
        )
        return error
    if status in (401, 403):
        # The gateway's own credential was refused: the caller can do nothing about it.
        return UpstreamError(f"Deployment '{deployment}' refused the gateway's credentials (HTTP {status}).")
    if status == 408:
        return UpstreamTimeout(f"Deployment '{deployment}' timed out (HTTP 408).")
    if 400 <= status < 500:
        return UpstreamRejected(
            f"Deployment '{deployment}' rejected the request: {message or f'HTTP {status}'}", status=status
        )
    return UpstreamError(f"Deployment '{deployment}' failed with HTTP {status}.")


def _upstream_message(body: bytes) -> str:
    try:
        parsed: Any = orjson.loads(body)
        message = parsed["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""
    return str(message)[:500] if message else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def translate_transport_error(
    deployment: str, exc: BaseException, *, midstream: bool = False
) -> GatewayError:
    where = "in the middle of the stream" if midstream else ""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"Deployment '{deployment}' timed out{' ' + where if where else ''}.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"Could not connect to deployment '{deployment}'.")
    return UpstreamError(f"Deployment '{deployment}' broke the connection{' ' + where if where else ''}.")
