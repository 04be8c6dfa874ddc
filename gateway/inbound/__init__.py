"""Inbound APIs: each is one adapter module that parses its requests into the internal request
(`gateway.wire.ChatRequest`) and renders answers back in its own format. The plain-ASGI endpoint
(`gateway.api.inbound`) serves every adapter on the same request path (`gateway.path`).

A new inbound API is one module here, with its tests, and one entry in `ADAPTERS` below.
"""

from __future__ import annotations

from gateway.inbound.adapter import InboundApi
from gateway.inbound.chat_completions import ChatCompletions


def adapters() -> tuple[InboundApi, ...]:
    """Every inbound API the gateway serves on its hot path."""
    return (ChatCompletions(),)
