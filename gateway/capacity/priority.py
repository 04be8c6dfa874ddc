"""Priority classes: how urgent a request is, and so who waits when a deployment is busy.

`interactive` (someone is waiting for the first token), `standard` (a person or a job that can take a
few seconds more) and `deferrable` (bulk work: batches, background responses, OpenAI's `flex` tier).
A request's class comes from its `x-gateway-priority` header, else OpenAI's `service_tier` (`flex` is
deferrable), else the policy's default for its key or team (`policy.schema.Priorities`).
"""

from __future__ import annotations

from typing import Literal

PriorityName = Literal["interactive", "standard", "deferrable"]
INTERACTIVE: PriorityName = "interactive"
STANDARD: PriorityName = "standard"
DEFERRABLE: PriorityName = "deferrable"
PRIORITIES: tuple[PriorityName, ...] = (INTERACTIVE, STANDARD, DEFERRABLE)
# Lower runs first.
RANK: dict[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}


def priority_named(text: str) -> PriorityName | None:
    """The class a header names (case and spaces ignored), or None when it names none."""
    name = text.strip().lower()
    for priority in PRIORITIES:
        if priority == name:
            return priority
    return None


def priority_of_service_tier(tier: object) -> PriorityName | None:
    """OpenAI's `service_tier`: `flex` accepts slower answers, so it is deferrable; the others say nothing."""
    return DEFERRABLE if tier == "flex" else None
