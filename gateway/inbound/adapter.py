"""What an inbound API adapter does: parse a body into the internal request, render answers back.

The internal request is an OpenAI chat request (`wire.ChatRequest.body`), and answers come back from the
request path as OpenAI chat completions or chunk streams (`wire.Completion`, `wire.ChatStream`); an
adapter for another API translates both ways, and keeps what it needs to render the answer (the
client's own request, parsed) in `ChatRequest.inbound`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.errors import GatewayError
from gateway.wire import Caller, ChatRequest, ChatStream, Completion


class OutboundStream(Protocol):
    """One streamed answer rendered in an API's format; it may keep state from event to event."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Blocks of complete SSE events, without what ends the stream."""
        ...

    async def end(self) -> bytes:
        """What ends a stream that the upstream finished properly (its usage is known by then)."""
        ...

    def error(self, error: GatewayError) -> bytes:
        """An error sent in-band on a stream that had started; nothing follows it."""
        ...


class InboundApi(Protocol):
    # The API's name as the ledger knows it (e.g. "chat.completions").
    name: str
    # The GenAI semantic conventions' `gen_ai.operation.name` for it (e.g. "chat").
    operation: str
    # The request paths it is served on.
    paths: frozenset[str]

    async def parse(self, raw: bytes, request_id: str, caller: Caller) -> ChatRequest:
        """The internal request for a body; raises InvalidRequest naming the offending field (or
        another GatewayError, e.g. NotFound for a stored response the caller may not read)."""
        ...

    async def body_of(self, request: ChatRequest, completion: Completion) -> bytes:
        """A whole answer in this API's format."""
        ...

    def stream_of(self, request: ChatRequest, stream: ChatStream) -> OutboundStream:
        """A streamed answer in this API's format."""
        ...

    def error_body(self, error: GatewayError) -> bytes:
        """An error in this API's error format, as a response body."""
        ...
