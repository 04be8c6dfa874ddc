"""The gateway's internal request and answer, whatever API a client spoke and whatever an upstream speaks,
and who asked (`Caller`, what the authenticate step hands on).

An inbound adapter (`gateway.inbound`) turns a client's body into a `ChatRequest`; a provider turns a
`ChatRequest` into an upstream call and gives back a `Completion` (a whole OpenAI `chat.completion`
body) or a `ChatStream` (complete SSE events in OpenAI's chunk format), each with its `Usage`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    # True when the upstream reported nothing and the gateway counted the tokens itself.
    estimated: bool = False

    @classmethod
    def from_openai(cls, usage: dict[str, Any]) -> Usage:
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            total_tokens=int(usage.get("total_tokens") or 0),
            details={k: v for k, v in usage.items() if k.endswith("_details") and v},
        )


@dataclass(frozen=True, slots=True)
class Caller:
    team: str | None = None
    key: str | None = None
    role: str | None = None
    tags: tuple[str, ...] = ()
    # The client's W3C `traceparent`: the gateway's spans join the client's trace.
    traceparent: str | None = None
    # `Cache-Control: no-cache`: answer from the upstream, whatever the policy says.
    no_cache: bool = False
    # The client's API headers (`anthropic-version`, `anthropic-beta`) for an upstream that speaks its API.
    api_headers: tuple[tuple[str, str], ...] = ()
    # The priority class the client asked for (`x-gateway-priority`), None when it asked for none.
    priority: str | None = None


@dataclass(slots=True)
class ChatRequest:
    """One request on its way through the gateway: `body` is an OpenAI chat request (the client's own
    JSON for chat completions, forwarded as it is), `model` still the client's; `api` is the inbound
    API it came through, and `inbound` what its adapter keeps of the client's own request to render the
    answer (None for chat completions)."""

    body: dict[str, Any]
    request_id: str
    stream: bool = False
    include_usage: bool = False
    api: str = "chat.completions"
    inbound: Any = None
    # The input's tokens when the adapter counted them (APIs whose input is not `messages`).
    prompt_tokens: int | None = None
    # A batch line's identity, for an answer from the deployment's own Batch API; None otherwise.
    deferred: DeferredLine | None = None


@dataclass(frozen=True, slots=True)
class DeferredLine:
    """A batch line run through the request path: `key` names it at an upstream's Batch API, the same on
    every run of the line (so a line run again after a crash is never sent twice); `parked` is called
    once it waits there, when it no longer needs a place among the lines the runner runs at once."""

    key: str
    parked: Callable[[], None]
    # Whether it may wait at an upstream's Batch API (a background response is waited for: never).
    parkable: bool = True
    # The spend record id an earlier run of the line was recorded under (it was answered, then the
    # process died before the answer was kept): this run records under it too, so the ledger keeps one.
    record_id: str | None = None


@dataclass(slots=True)
class Deadline:
    """An absolute point on the monotonic clock by which the whole request must be answered."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


@dataclass(slots=True)
class Completion:
    body: bytes
    usage: Usage | None
    upstream_seconds: float
    # The body is in the inbound API's own format (an upstream that speaks it answered as it is), not
    # a chat completion.
    native: bool = False


class ChatStream(Protocol):
    """An open upstream stream, returned only once its first event has arrived.

    Iterating yields blocks of complete SSE events (`data: {...}\\n\\n`) in OpenAI's chunk format, never
    the closing `data: [DONE]`. Iteration ends normally only when the upstream finished the stream
    properly; a stream broken midway raises an `UpstreamError`. Usage-only chunks are yielded only
    when the client asked for them (`include_usage`); `usage` is filled in either way.

    A `native` stream instead yields the inbound API's own events, as an upstream that speaks that API
    sent them, but the event that ends it: `ending` holds that one once iteration has ended (b"" for a
    stream in chunk format, whose end the adapter writes).
    """

    usage: Usage | None
    first_byte_seconds: float

    @property
    def native(self) -> bool: ...

    @property
    def ending(self) -> bytes: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


def native_body_of(request: ChatRequest) -> dict[str, Any]:
    """What an upstream that speaks the request's inbound API itself is sent (its adapter keeps it in
    `inbound.native_body`)."""
    body = getattr(request.inbound, "native_body", None)
    if not isinstance(body, dict):
        raise AssertionError(f"a {request.api} request carries the body for its native upstreams")
    return body


def embedding_texts(body: dict[str, Any]) -> list[str] | None:
    """An embeddings request's inputs as texts, or None when it sent token ids."""
    given = body["input"]
    if isinstance(given, str):
        return [given]
    if all(isinstance(item, str) for item in given):
        return list(given)
    return None
