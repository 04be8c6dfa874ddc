"""Which priority class a request runs in (`capacity/priority.py` says what the classes mean).

The caller's default comes from the policy: its key's class, else its team's, else the policy's
`default`. The client may ask for another, by `x-gateway-priority` or OpenAI's `service_tier: flex`
(deferrable): a lower class is always granted, a higher one only when the policy lets clients raise
their own (`clients_may_raise`), so a batch team cannot make its jobs interactive by setting a header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.capacity.priority import RANK, PriorityName, priority_named, priority_of_service_tier
from gateway.policy.schema import Priorities


def priority_of(
    priorities: Priorities,
    team: str | None,
    key: str | None,
    asked: str | None,
    body: Mapping[str, Any],
) -> PriorityName:
    default: PriorityName = priorities.default
    if key is not None and key in priorities.keys:
        default = priorities.keys[key]
    elif team is not None and team in priorities.teams:
        default = priorities.teams[team]
    if asked is not None:
        wanted = priority_named(asked)
    else:
        wanted = priority_of_service_tier(body.get("service_tier"))
    if wanted is None or wanted == default:
        return default
    if RANK[wanted] > RANK[default] or priorities.clients_may_raise:
        return wanted
    return default
