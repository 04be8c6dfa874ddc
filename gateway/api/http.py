"""Small pieces of raw ASGI shared by the endpoints: headers, request ids, error responses."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.identity.auth import Principal
from gateway.errors import GatewayError
from gateway.pipeline import Caller

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MAX_REQUEST_ID = 128


def header_value(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The client's x-request-id when it sent a sane one, else a new id."""
    sent = header_value(scope, b"x-request-id")
    if sent and len(sent) <= _MAX_REQUEST_ID and sent.isprintable() and sent.isascii():
        return sent
    return uuid.uuid4().hex


async def send_error(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    error: GatewayError,
    headers: list[tuple[bytes, bytes]],
) -> None:
    body = error.to_json()
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


def caller_of(scope: MutableMapping[str, Any], principal: Principal) -> Caller:
    """Who is asking: the key's team and role, and the request's tags (`x-gateway-tags: a, b`)."""
    tags = header_value(scope, b"x-gateway-tags")
    return Caller(
        team=principal.team,
        key=principal.key_id,
        role=principal.role,
        tags=tuple(tag.strip() for tag in tags.split(",") if tag.strip()) if tags else (),
        traceparent=header_value(scope, b"traceparent"),
        no_cache=_no_cache(header_value(scope, b"cache-control")),
    )


def _no_cache(cache_control: str | None) -> bool:
    if not cache_control:
        return False
    directives = {part.strip().lower() for part in cache_control.split(",")}
    return bool(directives & {"no-cache", "no-store"})
