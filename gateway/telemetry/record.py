"""What telemetry reads from a finished request.

Side modules never import each other, so telemetry reads the spend record through `FinishedRequest`, a
Protocol that `gateway.ledger.record.SpendRecord` satisfies, rather than by importing the ledger.
tests/telemetry checks that SpendRecord still has every field named here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]


@runtime_checkable
class FinishedRequest(Protocol):
    """The fields of a finished request that spans and metrics are made from."""

    @property
    def api(self) -> str: ...
    @property
    def policy(self) -> str | None: ...
    @property
    def route(self) -> str | None: ...
    @property
    def rule(self) -> str | None: ...
    @property
    def team(self) -> str | None: ...
    @property
    def deployment(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def cache(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def estimated(self) -> bool: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def saved_usd(self) -> float | None: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def ttfb_ms(self) -> float | None: ...
    @property
    def upstream_ms(self) -> float | None: ...
    @property
    def overhead_ms(self) -> float | None: ...


def error_type(record: FinishedRequest) -> str | None:
    """The error.type of a failed request: its error class, else its status code; None when it succeeded."""
    if record.status < 400:
        return None
    return record.error or str(record.status)


def present(pairs: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    """OpenTelemetry attributes cannot be None: an unknown value is left out, not sent as ""."""
    return {key: value for key, value in pairs.items() if value is not None}
