"""What an inbound API adapter does: parse a body into the internal request, render answers back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.errors import GatewayError
from gateway.wire import ChatRequest, ChatStream, Completion


class InboundApi(Protocol):
    # The API's name as the ledger and the GenAI conventions know it (e.g. "chat.completions").
    name: str
    # The request paths it is served on.
    paths: frozenset[str]

    def parse(self, raw: bytes, request_id: str) -> ChatRequest:
        """The internal request for a body; raises InvalidRequest naming the offending field."""
        ...

    def body_of(self, completion: Completion) -> bytes:
        """A whole answer in this API's format."""
        ...

    def events_of(self, stream: ChatStream) -> AsyncIterator[bytes]:
        """A streamed answer as this API's events (blocks of complete SSE events), without the end."""
        ...

    def stream_end(self, stream: ChatStream) -> bytes:
        """What ends a stream that finished properly."""
        ...

    def error_body(self, error: GatewayError) -> bytes:
        """An error in this API's error format, as a response body."""
        ...

    def stream_error(self, error: GatewayError) -> bytes:
        """An error in this API's format, sent in-band on a stream that had started."""
        ...
