"""Inbound APIs: each is one adapter module that parses its requests into the internal request
(`gateway.wire.ChatRequest`) and renders answers back in its own format. The plain-ASGI endpoint
(`gateway.api.inbound`) serves every adapter on the same request path (`gateway.path`).

A new inbound API is one module here, with its tests, and one entry in `adapters` below.
"""

from __future__ import annotations

from gateway.inbound.adapter import InboundApi
from gateway.inbound.anthropic_messages import AnthropicMessages
from gateway.inbound.chat_completions import ChatCompletions
from gateway.inbound.completions import Completions
from gateway.inbound.embeddings import Embeddings
from gateway.inbound.response_store import ResponseStore
from gateway.inbound.responses import Responses
from gateway.tokens import TokenCounter


def adapters(tokens: TokenCounter, stored_responses: ResponseStore) -> tuple[InboundApi, ...]:
    """Every inbound API the gateway serves on its hot path."""
    return (
        ChatCompletions(),
        Responses(stored_responses),
        AnthropicMessages(),
        Embeddings(tokens),
        Completions(),
    )
