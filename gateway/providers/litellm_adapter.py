"""A provider that reaches Anthropic (and anything else litellm speaks) through litellm.

litellm does the wire translation (OpenAI request -> Anthropic Messages API -> OpenAI response); this
module bounds it by the request's deadline, reshapes its objects into plain OpenAI JSON and turns its
exceptions into `gateway.errors`. `import litellm` costs seconds and hundreds of MB, so it happens
here only, lazily, on a worker thread, the first time a deployment is actually used.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import orjson

from gateway.config import Deployment
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.litellm_wire import chunk_json, completion_json
from gateway.tokens import use_bundled_tiktoken_files
from gateway.wire import ChatRequest, ChatStream, Completion, Deadline, Usage

# OpenAI chat parameters passed on to litellm. An allow-list, not "everything but model/stream":
# litellm also reads control keywords (api_base, api_key, mock_response, ...) from the same call,
# and a client must not be able to redirect the gateway's key elsewhere.
PASSTHROUGH_PARAMS = frozenset(
    {
        "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "modalities", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier",
        "seed", "service_tier", "stop", "store", "temperature", "thinking", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
    }
)  # fmt: skip
_UPSTREAM_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _import_litellm() -> ModuleType:
    """Import litellm with its network look-ups disabled; runs on a worker thread."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    use_bundled_tiktoken_files()
    import litellm
    import litellm.llms.custom_httpx.http_handler
    import litellm.types.utils

    # Otherwise litellm prints "Provider List" / "Give Feedback" banners to stdout on every error.
    litellm.suppress_debug_info = True
    with warnings.catch_warnings():
        # litellm's message models are built lazily, at the first response, and pydantic warns
        # while building them (ReadOnly TypedDict items); build them here, off the event loop and
        # without the warning, which an error-on-warning setting would turn into a failed call.
        warnings.filterwarnings("ignore", message=r".*`ReadOnly` qualifier", category=UserWarning)
        litellm.types.utils.Delta()
        litellm.types.utils.Message()
    return litellm


class LiteLLMProvider:
    """One deployment called through `litellm.acompletion`, with OpenAI-format bytes coming out."""

    def __init__(self, deployment: Deployment, environ: Mapping[str, str]) -> None:
        self.deployment = deployment
        self._label = f"upstream {deployment.name or deployment.model!r}"
        default_env = "ANTHROPIC_API_KEY" if deployment.provider == "anthropic" else None
        self._key_env = deployment.api_key_env or default_env
        self._api_key = (environ.get(self._key_env) or None) if self._key_env else None
        model = deployment.model
        if deployment.provider == "anthropic" and not model.startswith("anthropic/"):
            model = f"anthropic/{model}"
        self._model = model
        self._anthropic_route = model.startswith("anthropic/")
        api_base = deployment.api_base
        if api_base and self._anthropic_route:
            # litellm appends /v1/messages itself; a base ending in /v1 would become /v1/v1/messages.
            api_base = api_base.rstrip("/").removesuffix("/v1")
        self._api_base = api_base
        self._litellm: ModuleType | None = None
        self._client: Any = None  # litellm's AsyncHTTPHandler, owned here so aclose() can close it
        self._loading = asyncio.Lock()

    @property
    def available(self) -> bool:
        return self._key_env is None or self._api_key is not None

    @property
    def unavailable_reason(self) -> str:
        return "" if self.available else f"{self._key_env} is not set"

    async def warm_up(self) -> None:
        """Pay for the litellm import now (e.g. in the background after start-up) instead of on a request."""
        await self._load()

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        litellm = await self._ready()
        budget = _budget(deadline, self.deployment.timeouts.total)
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                response = await litellm.acompletion(**self._arguments(request, budget, stream=False))
        except Exception as exc:
            raise self._translate(exc, litellm) from None
        upstream_seconds = time.monotonic() - started
        body, usage = completion_json(response.model_dump(), self.deployment.model)
        return Completion(
            body=orjson.dumps(body),
            usage=Usage.from_openai(usage) if usage else None,
            upstream_seconds=upstream_seconds,
        )

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream:
        litellm = await self._ready()
        started = time.monotonic()
        ends_at = min(deadline.at, started + self.deployment.timeouts.total)
        # Also litellm's per-read timeout, so it bounds each gap between chunks as well as the first.
        first_budget = min(_budget(deadline, self.deployment.timeouts.first_byte), ends_at - started)
        wrapper: Any = None
        try:
            async with asyncio.timeout(first_budget):
                wrapper = await litellm.acompletion(**self._arguments(request, first_budget, stream=True))
                first = await anext(wrapper)
        except BaseException as exc:  # cancellation included: the connection must not be left open
            if wrapper is not None:
                await wrapper.aclose()
            if isinstance(exc, StopAsyncIteration):
                raise UpstreamError(f"{self._label} closed the stream without sending anything") from None
            if isinstance(exc, Exception):
                raise self._translate(exc, litellm) from None
            raise
        stream = LiteLLMStream(self, wrapper, first, include_usage=request.include_usage, ends_at=ends_at)
        stream.first_byte_seconds = time.monotonic() - started
        return stream

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _load(self) -> ModuleType:
        if self._litellm is None:
            async with self._loading:
                if self._litellm is None:
                    self._litellm = await asyncio.to_thread(_import_litellm)
        return self._litellm

    async def _ready(self) -> ModuleType:
        if not self.available:
            raise UpstreamUnavailable(f"{self._label} is unavailable: {self.unavailable_reason}")
        litellm = await self._load()
        if self._anthropic_route and self._client is None:
            # Our own HTTP client rather than litellm's module-level one, so aclose() can release it.
            self._client = litellm.llms.custom_httpx.http_handler.AsyncHTTPHandler()
        return litellm

    def _arguments(self, request: ChatRequest, timeout: float, *, stream: bool) -> dict[str, Any]:
        body = request.body
        arguments: dict[str, Any] = {key: value for key, value in body.items() if key in PASSTHROUGH_PARAMS}
        arguments.update(
            model=self._model,
            messages=body.get("messages") or [],
            api_base=self._api_base,
            api_key=self._api_key,
            # A float: for Anthropic litellm reduces an httpx.Timeout to its read part anyway.
            timeout=timeout,
            num_retries=0,  # the router retries and falls back; litellm must not retry underneath it
            drop_params=True,  # an OpenAI parameter the upstream lacks is dropped, not a 400
        )
        if self._client is not None:
            arguments["client"] = self._client
        if stream:
            arguments["stream"] = True
            if request.include_usage or self.deployment.stream_usage:
                arguments["stream_options"] = {"include_usage": True}
        return arguments

    def _translate(self, exc: BaseException, litellm: ModuleType, *, midstream: bool = False) -> GatewayError:
        return translate_error(exc, litellm, label=self._label, secret=self._api_key, midstream=midstream)


class LiteLLMStream:
    """A litellm stream whose first chunk has arrived, re-emitted as OpenAI SSE events."""

    native = False
    ending = b""

    def __init__(
        self, provider: LiteLLMProvider, wrapper: Any, first: Any, *, include_usage: bool, ends_at: float
    ) -> None:
        self.usage: Usage | None = None
        self.first_byte_seconds = 0.0
        self._provider = provider
        self._wrapper = wrapper
        self._pending: Any = first
        self._include_usage = include_usage
        self._ends_at = ends_at
        self._finished = False  # a finish_reason was seen: the upstream ended the answer properly
        self._closed = False

    def __aiter__(self) -> LiteLLMStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunk, self._pending = self._pending, None
            if chunk is None:
                chunk = await self._receive()
            event = self._render(chunk.model_dump())
            if event is not None:
                return event

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._wrapper.aclose()

    async def _receive(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        label = self._provider._label
        remaining = self._ends_at - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                return await anext(self._wrapper)
        except StopAsyncIteration:
            await self.aclose()
            if not self._finished:
                raise UpstreamError(f"{label} ended the stream before finishing the answer") from None
            raise
        except Exception as exc:
            await self.aclose()
            litellm = self._provider._litellm
            assert litellm is not None  # a stream exists only once litellm is loaded
            raise self._provider._translate(exc, litellm, midstream=True) from None

    def _render(self, raw: dict[str, Any]) -> bytes | None:
        chunk, usage = chunk_json(raw, self._provider.deployment.model)
        if usage:
            self.usage = Usage.from_openai(usage)
        if any(choice["finish_reason"] for choice in chunk["choices"]):
            self._finished = True
        if self._include_usage:
            chunk["usage"] = usage
        elif not chunk["choices"]:
            return None  # a usage-only chunk the client did not ask for
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _budget(deadline: Deadline, limit: float) -> float:
    remaining = deadline.remaining()
    if remaining <= 0:
        raise UpstreamTimeout("the request's deadline passed before the upstream was called")
    return min(limit, remaining)


def translate_error(
    exc: BaseException, litellm: ModuleType, *, label: str, secret: str | None, midstream: bool = False
) -> GatewayError:
    """Map a litellm (or asyncio) exception onto the gateway's error tree.

    Messages are written here, never copied from litellm (whose text can carry request details);
    only the upstream's own short error message is kept for a 4xx, with the key scrubbed out.
    """
    errors = litellm.exceptions
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, errors.MidStreamFallbackError) and isinstance(exc.original_exception, Exception):
        exc = exc.original_exception
    if isinstance(exc, (TimeoutError, errors.Timeout)):
        return UpstreamTimeout(f"{label} did not answer in time")
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if midstream:
        return UpstreamError(f"{label} broke off the stream ({_describe(exc, status)})")
    if isinstance(exc, errors.RateLimitError) or status == 429:
        return UpstreamRateLimited(f"{label} is rate limiting requests", retry_after=_retry_after(exc))
    if isinstance(exc, (errors.AuthenticationError, errors.PermissionDeniedError)) or status in (401, 403):
        return UpstreamError(f"{label} refused the gateway's credentials (HTTP {status or 401})")
    if isinstance(exc, errors.NotFoundError) or status == 404:
        return UpstreamError(f"{label} does not know the configured model (HTTP 404)")
    if isinstance(exc, errors.APIConnectionError):
        return UpstreamError(f"{label} could not be reached")
    if status is not None and 400 <= status < 500:
        detail = _upstream_message(exc, secret)
        message = f"{label} rejected the request: {detail}" if detail else f"{label} rejected the request"
        return UpstreamRejected(message, status=status)
    return UpstreamError(f"{label} failed ({_describe(exc, status)})")


def _describe(exc: BaseException, status: int | None) -> str:
    return f"HTTP {status}" if status is not None else type(exc).__name__


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _upstream_message(exc: BaseException, secret: str | None) -> str:
    """The upstream's own `error.message`, if its JSON error body is quoted in the exception."""
    match = _UPSTREAM_MESSAGE.search(str(exc))
    if match is None:
        return ""
    try:
        text = str(orjson.loads(f'"{match.group(1)}"'))
    except orjson.JSONDecodeError:
        return ""
    if secret:
        text = text.replace(secret, "[redacted]")
    return text[:300]
