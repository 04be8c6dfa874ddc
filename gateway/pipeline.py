"""One chat request from start to end: decide where it goes (the policy, for `model: auto`), apply the
rule's overrides, then call upstreams in order.

The cache and accounting slot in here as later steps; the HTTP layer only parses, calls
`ChatPipeline.answer` and writes what comes back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from gateway.accounting.pricing import PriceBook, Spend, TokenPrice, per_million, spend_of
from gateway.errors import GatewayError
from gateway.policy.compile import CompiledPolicy
from gateway.policy.decide import Decision, decide
from gateway.policy.records import DecisionLog, DecisionRecord
from gateway.policy.schema import Overrides, Policy
from gateway.policy.signals import RequestFacts
from gateway.policy.store import PolicyStore
from gateway.providers.base import ChatRequest, ChatStream, Completion, Deadline, Usage
from gateway.routing.catalog import AUTO, Catalog, Target
from gateway.routing.executor import Outcome, RouteExecutor
from gateway.routing.shadow import ShadowCopies

# The rule reported for requests that named a route or deployment themselves.
EXPLICIT_RULE = "explicit"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, as far as the gateway knows."""

    team: str | None = None
    key: str | None = None
    role: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Routing:
    target: Target
    rule: str
    decision: Decision | None
    policy: CompiledPolicy


@dataclass(slots=True)
class Answer:
    route: str
    deployment: str
    rule: str
    fallback: str | None
    upstream_seconds: float
    completion: Completion | None = None
    stream: ChatStream | None = None
    # Known for answers whose usage came with them (not streams: their usage comes at the end).
    spend: Spend | None = None


class ChatPipeline:
    def __init__(
        self,
        catalog: Catalog,
        policies: PolicyStore,
        executor: RouteExecutor,
        request_timeout: float,
        records: DecisionLog | None = None,
        shadows: ShadowCopies | None = None,
        prices: PriceBook | None = None,
    ) -> None:
        self._prices = prices
        self.catalog = catalog
        self.policies = policies
        self._records = records
        self._shadows = shadows
        self._executor = executor
        self._request_timeout = request_timeout

    def facts(self, request: ChatRequest, caller: Caller, policy: Policy) -> RequestFacts:
        return RequestFacts(
            body=request.body,
            team=caller.team,
            key=caller.key,
            role=caller.role,
            tags=caller.tags,
            request_id=request.request_id,
            route_healthy=lambda route: self.catalog.route_healthy(policy, route),
        )

    def route(self, request: ChatRequest, caller: Caller, *, explain: bool = False) -> Routing:
        """Where the request goes, and which rule said so; calls no model."""
        compiled = self.policies.current
        if request.body["model"] != AUTO:
            target = self.catalog.resolve(request.body["model"], compiled.policy, request.request_id)
            return Routing(target, EXPLICIT_RULE, None, compiled)
        decision = decide(compiled, self.facts(request, caller, compiled.policy), explain=explain)
        target = self.catalog.for_decision(decision, compiled.policy, request.request_id)
        return Routing(target, decision.rule, decision, compiled)

    def explain(self, request: ChatRequest, caller: Caller) -> dict[str, Any]:
        """What `answer` would do with this request, and why, without calling any model: the same
        routing code, with every rule and signal evaluated."""
        routing = self.route(request, caller, explain=True)
        target = routing.target
        if routing.decision is not None:
            explained = routing.decision.as_json()
        else:
            explained = {"rule": EXPLICIT_RULE, "route": target.route}
        explained["policy"] = routing.policy.name
        explained["candidates"] = [
            {
                "route": candidate.route,
                "deployment": candidate.provider.deployment.name,
                "usable": self.catalog.deployment_usable(candidate.provider.deployment.name),
            }
            for candidate in target.candidates
        ]
        return explained

    async def answer(self, request: ChatRequest, caller: Caller = Caller()) -> Answer:
        routing = self.route(request, caller)
        decision = routing.decision
        if decision is not None and decision.shadow is not None and self._shadows is not None:
            self._shadows.send(request, decision.rule, decision.shadow, routing.policy.policy)
        started, status, deployment = time.perf_counter(), 200, None
        try:
            answer = await self._call(request, routing)
            deployment = answer.deployment
            return answer
        except GatewayError as error:
            # The client is told which rule and route failed it, as on success.
            error.rule, error.route = routing.rule, routing.target.route
            status = error.status
            raise
        finally:
            if decision is not None and self._records is not None:
                latency_ms = (time.perf_counter() - started) * 1000
                self._records.add(
                    DecisionRecord(
                        request.request_id, time.time(), routing.policy.name, caller.team, decision.rule,
                        decision.route, deployment, status, latency_ms, decision.signals,
                    )
                )  # fmt: skip

    async def _call(self, request: ChatRequest, routing: Routing) -> Answer:
        target, rule, decision = routing.target, routing.rule, routing.decision
        timeout = self._request_timeout
        if decision is not None and decision.overrides is not None:
            request = _with_overrides(request, decision.overrides)
            timeout = min(timeout, decision.overrides.timeout_seconds or timeout)
        deadline = Deadline.after(timeout)
        if request.stream:
            streamed: Outcome[ChatStream] = await self._executor.run(
                target, lambda provider: provider.open_stream(request, deadline), deadline
            )
            return Answer(
                streamed.route, streamed.deployment, rule, streamed.fallback, streamed.upstream_seconds,
                stream=streamed.result,
            )  # fmt: skip
        completed: Outcome[Completion] = await self._executor.run(
            target, lambda provider: provider.complete(request, deadline), deadline
        )
        spend = self._spend(
            routing.policy.policy, completed.route, completed.deployment, completed.result.usage
        )
        return Answer(
            completed.route, completed.deployment, rule, completed.fallback, completed.upstream_seconds,
            completion=completed.result, spend=spend,
        )  # fmt: skip

    def _spend(self, policy: Policy, route: str, deployment: str, usage: Usage | None) -> Spend | None:
        """The cost at the answering route's price, and at the policy's reference route's."""
        if self._prices is None or usage is None:
            return None
        price = _route_price(policy, route) or self._prices.price_of(deployment)
        reference = None
        if policy.reference_route is not None:
            spec = policy.routes[policy.reference_route]
            first = spec.deployments[0] if spec.deployments else next(iter(spec.split or {}))
            reference = _route_price(policy, policy.reference_route) or self._prices.price_of(first)
        cached = (usage.details.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return spend_of(price, reference, usage.prompt_tokens, usage.completion_tokens, int(cached))


def _route_price(policy: Policy, route: str) -> TokenPrice | None:
    spec = policy.routes.get(route)  # None when the client named a deployment
    if spec is None or spec.price is None:
        return None
    return per_million(spec.price.input_per_mtok, spec.price.output_per_mtok)


def _with_overrides(request: ChatRequest, overrides: Overrides) -> ChatRequest:
    """Cap the answer's length as the rule says (the client's own lower limit stands)."""
    cap = overrides.max_tokens
    if cap is None:
        return request
    body: dict[str, Any] = dict(request.body)
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(field)
    if not isinstance(asked, int) or asked > cap:
        body[field] = cap
    return replace(request, body=body)
