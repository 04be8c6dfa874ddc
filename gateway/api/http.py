"""Small pieces of raw ASGI shared by the endpoints: headers, request ids, error responses."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.requests import Request

from gateway.capacity.priority import PRIORITIES, priority_named
from gateway.errors import BodyTooLarge, GatewayError, InvalidRequest
from gateway.identity.auth import Principal
from gateway.wire import Caller

_MAX_REQUEST_ID = 128
# The request headers the hot path reads, gathered in one pass over the client's headers.
_WANTED = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"content-length",
        b"x-request-id",
        b"x-gateway-tags",
        b"x-gateway-priority",
        b"traceparent",
        b"cache-control",
        b"anthropic-version",
        b"anthropic-beta",
    }
)
# The client's API headers an upstream that speaks its API is sent on (a pass-through).
API_HEADERS = (b"anthropic-version", b"anthropic-beta")


def wanted_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The headers the hot path reads, by lower-case name (ASGI servers lower-case them), first one wins."""
    found: dict[bytes, str] = {}
    for key, value in raw:
        if key in _WANTED and key not in found:
            found[key] = value.decode("latin-1")
    return found


def credentials(authorization: str | None, api_key: str | None) -> str | None:
    """The client's credentials as an `Authorization` value: that header, or Anthropic's `x-api-key`
    (what Anthropic's clients send) as a bearer token."""
    if authorization is None and api_key:
        return f"Bearer {api_key}"
    return authorization


def credentials_of(wanted: dict[bytes, str]) -> str | None:
    """`credentials` from the headers `wanted_headers` gathered."""
    return credentials(wanted.get(b"authorization"), wanted.get(b"x-api-key"))


class RequestIds:
    """The client's x-request-id when it sent a sane one, else a new id: random per process, then a
    counter (a uuid4 per request cost more than the rest of reading its headers)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count()

    def of(self, sent: str | None) -> str:
        if sent and len(sent) <= _MAX_REQUEST_ID and sent.isprintable() and sent.isascii():
            return sent
        return f"{self._prefix}{next(self._next):08x}"


async def body_within(request: Request, limit: int) -> bytes:
    """A FastAPI route's request body; BodyTooLarge past `limit` bytes (as the hot path's endpoints)."""
    raw = await request.body()
    if len(raw) > limit:
        raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    return raw


def header_value(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


async def send_error(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    error: GatewayError,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None = None,
) -> None:
    """The error as a response: its body in the API's error format (`body`), OpenAI's by default."""
    body = error.to_json() if body is None else body
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    if error.rule is not None and error.route is not None:
        response_headers.append((b"x-gateway-rule", error.rule.encode()))
        response_headers.append((b"x-gateway-route", error.route.encode()))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        response_headers.append((b"retry-after", str(int(retry_after + 0.999)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


def caller_of(headers: dict[bytes, str], principal: Principal) -> Caller:
    """Who is asking: the key's team and role, and the request's tags (`x-gateway-tags: a, b`);
    `headers` as `wanted_headers` gathered them."""
    tags = headers.get(b"x-gateway-tags")
    asked = headers.get(b"x-gateway-priority")
    priority = priority_named(asked) if asked else None
    if asked and priority is None:
        raise InvalidRequest(
            f"x-gateway-priority must be one of {', '.join(PRIORITIES)}, not {asked[:40]!r}.",
            param="x-gateway-priority",
        )
    return Caller(
        team=principal.team,
        key=principal.key_id,
        role=principal.role,
        tags=tuple(tag.strip() for tag in tags.split(",") if tag.strip()) if tags else (),
        traceparent=headers.get(b"traceparent"),
        no_cache=_no_cache(headers.get(b"cache-control")),
        api_headers=tuple((name.decode(), headers[name]) for name in API_HEADERS if name in headers),
        priority=priority,
    )


def _no_cache(cache_control: str | None) -> bool:
    if not cache_control:
        return False
    directives = {part.strip().lower() for part in cache_control.split(",")}
    return bool(directives & {"no-cache", "no-store"})
