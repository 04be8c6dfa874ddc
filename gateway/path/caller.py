"""Who sent a request, as far as the gateway knows: what the authenticate step hands on."""

from __future__ import annotations

from dataclasses import dataclass


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
