"""Build the provider for each configured deployment."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from gateway.config import Deployment
from gateway.embedding.batcher import EmbeddingBatcher
from gateway.providers.base import Provider
from gateway.providers.native_first import NativeFirst
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.tokens import TokenCounter
from gateway.wire import ChatRequest, ChatStream, Completion, Deadline


class SupervisedLocalProvider:
    """The managed local model: the fast path to a server the gateway runs, available while healthy."""

    def __init__(self, inner: OpenAICompatProvider, healthy: Callable[[], bool]) -> None:
        self.deployment = inner.deployment
        self._inner = inner
        self._healthy = healthy

    @property
    def available(self) -> bool:
        return self._healthy()

    @property
    def unavailable_reason(self) -> str:
        return "the local model server is not running (yet)"

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        return await self._inner.complete(request, deadline)

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream:
        return await self._inner.open_stream(request, deadline)

    async def aclose(self) -> None:
        await self._inner.aclose()


class NoLocalModel:
    """Stands in for a managed-local deployment when the gateway does not run the model server."""

    def __init__(self, deployment: Deployment, reason: str) -> None:
        self.deployment = deployment
        self.unavailable_reason = reason
        self.available = False

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        raise AssertionError("never called: the provider is unavailable")

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream:
        raise AssertionError("never called: the provider is unavailable")

    async def aclose(self) -> None:
        return None


def build_provider(
    deployment: Deployment,
    session: aiohttp.ClientSession,
    environ: Mapping[str, str],
    tokens: TokenCounter,
    local_model: tuple[str, Callable[[], bool]] | str,
    embedder: EmbeddingBatcher | None = None,
) -> Provider:
    """`local_model` is the managed server's (base URL, health check), or why there is none;
    `embedder` the local sentence embedder, when its model is installed."""
    if deployment.provider == "openai":
        chat = OpenAICompatProvider(deployment, session, environ, tokens)
        if not deployment.responses_api:
            return chat
        from gateway.providers.openai_responses import RESPONSES, ResponsesCalls

        native = ResponsesCalls(deployment, session, chat.headers, chat.api_base)
        return NativeFirst(frozenset({RESPONSES}), native, chat)
    if deployment.provider == "managed-local":
        if isinstance(local_model, str):
            return NoLocalModel(deployment, local_model)
        base_url, healthy = local_model
        inner = OpenAICompatProvider(deployment, session, environ, tokens, api_base=base_url)
        return SupervisedLocalProvider(inner, healthy)
    if deployment.provider == "local-embedder":
        from gateway.providers.local_embedder import LocalEmbedderProvider  # numpy: only when configured

        return LocalEmbedderProvider(deployment, embedder, tokens)
    # Only deployments that need litellm load its adapter (litellm itself loads on first call).
    from gateway.providers.litellm_adapter import LiteLLMProvider

    translated = LiteLLMProvider(deployment, environ)
    if deployment.provider == "anthropic":
        from gateway.providers.anthropic_native import MESSAGES, AnthropicMessagesCalls

        key = environ.get(deployment.api_key_env or "ANTHROPIC_API_KEY") or None
        return NativeFirst(
            frozenset({MESSAGES}), AnthropicMessagesCalls(deployment, session, key), translated
        )
    return translated
