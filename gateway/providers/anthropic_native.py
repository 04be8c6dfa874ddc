"""Anthropic's Messages API passed through: a Messages request goes to an Anthropic deployment as the
client sent it (only `model` replaced) and its bytes come back untouched, streams included, on the
aiohttp fast path with no litellm (`native_first.NativeFirst` sends every other request through
litellm's translation).

The usage is read from the answer (`usage` of a message; `message_start` and `message_delta` of a
stream): input tokens are Anthropic's `input_tokens` plus its cache reads and writes, the reads also
counted as cached.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.config import Deployment
from gateway.errors import UpstreamError
from gateway.providers.native_stream import (
    NativeEventStream,
    event_data,
    json_usage,
    native_payload,
    open_event_stream,
    post_for_body,
)
from gateway.providers.openai_compat import clipped, limits_of
from gateway.wire import ChatRequest, Completion, Deadline, Usage

ANTHROPIC_API = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
# The inbound API whose requests an Anthropic deployment takes as they are.
MESSAGES = "messages"
# What ends a finished stream: held back for the endpoint to send last.
MESSAGE_STOP = b"event: message_stop"


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
        self._limits = limits_of(deployment)

    def _payload(self, request: ChatRequest, stream: bool) -> bytes:
        return native_payload(request, self._model, stream=stream, max_tokens_field="max_tokens")

    def _headers_for(self, request: ChatRequest) -> dict[str, str]:
        """The deployment's headers, with the client's anthropic-version and anthropic-beta (the
        features its body may use need them)."""
        sent = getattr(request.inbound, "native_headers", ())
        return {**self._headers, **dict(sent)} if sent else self._headers

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        started = time.perf_counter()
        payload, headers = self._payload(request, False), self._headers_for(request)
        data = await post_for_body(
            self._session, self._name, self._url, payload, headers, clipped(self._limits, deadline)
        )
        usage = json_usage(self._name, data)
        return Completion(
            body=data,
            usage=usage_of_message(usage) if usage is not None else None,
            upstream_seconds=time.perf_counter() - started,
            native=True,
        )

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> NativeEventStream:
        payload, timeout = self._payload(request, True), clipped(self._limits, deadline)
        return await open_event_stream(
            self._session, self._name, self._url, payload, self._headers_for(request), timeout,
            MessagesEvents(self._name),
        )  # fmt: skip


class MessagesEvents:
    """What Anthropic's events say: the usage in `message_start` and `message_delta`, the end in
    `message_stop`, a failure in `error`."""

    def __init__(self, deployment: str) -> None:
        self._deployment = deployment
        self._usage: dict[str, Any] = {}
        self.usage: Usage | None = None

    def ends(self, event: bytes) -> bool:
        if event.startswith(MESSAGE_STOP):
            return True
        if event.startswith(b"event: error"):
            raise UpstreamError(f"Deployment '{self._deployment}' sent an error in the middle of the stream.")
        if b'"usage"' in event:
            data = event_data(event)
            if data is not None:
                holder = data.get("message") if data.get("type") == "message_start" else data
                usage = holder.get("usage") if isinstance(holder, dict) else None
                if isinstance(usage, dict):
                    self._usage.update({key: value for key, value in usage.items() if value is not None})
                    self.usage = usage_of_message(self._usage)
        return False
