"""OpenAI's Responses API passed through, to deployments that serve it (`responses_api: true`: OpenAI
itself, recent vLLM): a Responses request goes to `{api_base}/responses` as the Responses adapter
prepared it (the client's body, its history spelled out, `store: false`: the gateway keeps stored
responses, `inbound/responses_history.py`), with only `model` replaced, and the upstream's bytes come
back untouched, streams included.

The usage is the Response's (`input_tokens`, `output_tokens`, cached and reasoning tokens); a stream's
comes with its last event (`response.completed` or `response.incomplete`), which is held back for the
endpoint to send once the answer is recorded.
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

RESPONSES = "responses"
# The events that end a Responses stream: finished, cut short by a limit, or failed.
_ENDINGS = (b"event: response.completed", b"event: response.incomplete")
_FAILED = (b"event: response.failed", b"event: error")


def usage_of_response(usage: Mapping[str, Any]) -> Usage:
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    details: dict[str, Any] = {}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if cached:
        details["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if reasoning:
        details["completion_tokens_details"] = {"reasoning_tokens": int(reasoning)}
    return Usage(prompt, completion, int(usage.get("total_tokens") or prompt + completion), details)


class ResponsesEvents:
    """What a Responses stream's events say: its usage and its end in the last one."""

    def __init__(self, deployment: str) -> None:
        self._deployment = deployment
        self.usage: Usage | None = None

    def ends(self, event: bytes) -> bool:
        if event.startswith(_FAILED):
            raise UpstreamError(
                f"Deployment '{self._deployment}' failed the response in the middle of the stream."
            )
        if not event.startswith(_ENDINGS):
            return False
        data = event_data(event)
        response = data.get("response") if data is not None else None
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            self.usage = usage_of_response(usage)
        return True


class ResponsesCalls:
    """Responses API requests to one deployment that serves them, passed through."""

    def __init__(
        self, deployment: Deployment, session: aiohttp.ClientSession, headers: Mapping[str, str], base: str
    ) -> None:
        self._name = deployment.name
        self._model = deployment.model
        query = f"?api-version={deployment.api_version}" if deployment.api_version else ""
        self._url = f"{base.rstrip('/')}/responses{query}"
        self._session = session
        self._headers = dict(headers)
        self._limits = limits_of(deployment)

    def _payload(self, request: ChatRequest, stream: bool) -> bytes:
        return native_payload(request, self._model, stream=stream, max_tokens_field="max_output_tokens")

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        started = time.perf_counter()
        payload = self._payload(request, False)
        data = await post_for_body(
            self._session, self._name, self._url, payload, self._headers, clipped(self._limits, deadline)
        )
        usage = json_usage(self._name, data)
        return Completion(
            body=data,
            usage=usage_of_response(usage) if usage is not None else None,
            upstream_seconds=time.perf_counter() - started,
            native=True,
        )

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> NativeEventStream:
        payload, timeout = self._payload(request, True), clipped(self._limits, deadline)
        return await open_event_stream(
            self._session, self._name, self._url, payload, self._headers, timeout, ResponsesEvents(self._name)
        )
