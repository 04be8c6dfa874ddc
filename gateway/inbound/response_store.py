"""Stored responses (the Responses API's `store`): what is kept of an answer, and the store's contract.

The Responses adapter (`gateway.inbound.responses`) puts every answer whose request had `store` on
(the default), and reads one back when a request names it in `previous_response_id`; the backends
live in `gateway.stored_responses`. Every read is scoped to a tenant, so one caller never sees
another's responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.wire import Caller


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str  # "resp_..."
    tenant: str  # the caller's team, else its key id, else "" (no auth)
    response: dict[str, Any]  # the Responses object as returned to the client
    # This request's input items, each with an "id", as GET /v1/responses/{id}/input_items lists them.
    input_items: list[dict[str, Any]]
    # The whole chat conversation (OpenAI chat messages, system/instructions excluded) up to and
    # including this answer: what previous_response_id continues.
    conversation: list[dict[str, Any]]
    created_at: float  # unix seconds


class ResponseStore(Protocol):
    async def put(self, stored: StoredResponse) -> None: ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """None when missing, expired, or another tenant's."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool: ...

    async def aclose(self) -> None: ...


def tenant_of(caller: Caller) -> str:
    """Whose stored responses a caller reads and writes: its team, else its key, else "" (no auth)."""
    return caller.team or caller.key or ""
