"""The decision for one request: a pure function of the compiled policy and the request's facts."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.policy.schema import DEFAULT_RULE, CacheDirective, Overrides, Route
from gateway.policy.signals import RequestFacts, SignalBook, SignalValue

if TYPE_CHECKING:
    from gateway.policy.compile import CompiledPolicy


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    rule: str
    matched: bool
    why: str


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str
    route: str
    # The route's deployments in the order they are tried (a split's pick first).
    deployments: tuple[str, ...]
    cache: CacheDirective | None
    overrides: Overrides | None
    shadow: str | None
    # The values of the signals the decision looked at (all signals when explaining).
    signals: Mapping[str, SignalValue]
    # Every rule with whether it matched and why not (explain), else empty.
    outcomes: tuple[RuleOutcome, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "route": self.route,
            "deployments": list(self.deployments),
            "cache": self.cache.model_dump() if self.cache else None,
            "overrides": self.overrides.model_dump(exclude_none=True) if self.overrides else None,
            "shadow": self.shadow,
            "signals": dict(self.signals),
            "rules": [{"rule": o.rule, "matched": o.matched, "why": o.why} for o in self.outcomes],
        }


def decide(policy: CompiledPolicy, facts: RequestFacts, *, explain: bool = False) -> Decision:
    book = SignalBook(policy.evaluators, facts)
    outcomes: list[RuleOutcome] = []
    chosen = None
    for compiled in policy.rules:
        if explain:
            matched, why = compiled.condition.explain(book)
            outcomes.append(RuleOutcome(compiled.rule.name, matched, why))
        else:
            matched = compiled.condition.holds(book)
        if matched and chosen is None:
            chosen = compiled.rule
            if not explain:
                break
    if explain:
        for name in policy.evaluators:
            book.get(name)
    if chosen is None:
        route = policy.policy.default_route
        return Decision(
            DEFAULT_RULE, route, route_order(policy.policy.routes[route], facts.request_id),
            None, None, None, book.values, tuple(outcomes),
        )  # fmt: skip
    return Decision(
        chosen.name,
        chosen.route,
        route_order(policy.policy.routes[chosen.route], facts.request_id),
        chosen.cache,
        chosen.overrides,
        chosen.shadow,
        book.values,
        tuple(outcomes),
    )


def route_order(route: Route, request_id: str) -> tuple[str, ...]:
    """A route's deployments in try order; a split picks its first by weight, stably per request id
    (so explaining a request reproduces the pick)."""
    if route.deployments is not None:
        return tuple(route.deployments)
    assert route.split is not None
    names = list(route.split)
    total = sum(route.split.values())
    point = (zlib.crc32(request_id.encode()) / 2**32) * total
    for name in names:
        point -= route.split[name]
        if point < 0:
            return (name, *(other for other in names if other != name))
    return tuple(names)
