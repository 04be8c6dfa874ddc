"""The decide step: where a request goes and which rule said so — the policy for `model: auto`, the
catalog for a route or deployment the client named. Calls no model but the local embedder (off the event
loop); its `Routing` is its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.capacity.priority import INTERACTIVE, PriorityName
from gateway.errors import BudgetExceeded, InvalidRequest
from gateway.path.cost import RoutePrices
from gateway.policy.compile import CompiledPolicy
from gateway.policy.decide import Decision, decide
from gateway.policy.prepare import prepare_embeddings
from gateway.policy.priorities import priority_of
from gateway.policy.schema import CacheDirective, Policy
from gateway.policy.signals import RequestFacts
from gateway.policy.store import PolicyStore
from gateway.routing.catalog import AUTO, Catalog, Target
from gateway.wire import Caller, ChatRequest

# The rule reported for requests that named a route or deployment themselves.
EXPLICIT_RULE = "explicit"
# The rule reported for embeddings sent to the policy's embeddings route.
EMBEDDINGS_RULE = "embeddings_route"
EMBEDDINGS = "embeddings"

BudgetSpent = Callable[[Policy, str | None, str | None], float | None]


@dataclass(frozen=True, slots=True)
class Routing:
    target: Target
    rule: str
    decision: Decision | None
    policy: CompiledPolicy
    # What the policy looked at; its memo (the question's embedding) is shared with the cache.
    facts: RequestFacts | None = None
    # How the answer may come from (and go to) the cache: the rule's, or the policy's for embeddings.
    cache: CacheDirective | None = None
    # The request's priority class (`policy/priorities.py`): who waits first when capacity is short.
    priority: PriorityName = INTERACTIVE


class Decide:
    def __init__(
        self, catalog: Catalog, policies: PolicyStore, prices: RoutePrices, budget_spent: BudgetSpent
    ) -> None:
        self.catalog = catalog
        self.policies = policies
        self._prices = prices
        self._budget_spent = budget_spent

    def facts(
        self, request: ChatRequest, caller: Caller, policy: Policy, priority: str | None = None
    ) -> RequestFacts:
        budget_spent = self._budget_spent
        return RequestFacts(
            priority=priority,
            body=request.body,
            team=caller.team,
            key=caller.key,
            role=caller.role,
            tags=caller.tags,
            request_id=request.request_id,
            route_healthy=lambda route: self.catalog.route_healthy(policy, route),
            budget_spent=lambda: budget_spent(policy, caller.team, caller.key),
        )

    async def route(self, request: ChatRequest, caller: Caller, *, explain: bool = False) -> Routing:
        """Where the request goes, from the live policy read once: the embeddings its rules can read (every
        signal's, when explaining) computed off the event loop and batched with other requests', then the
        pure `decide`."""
        compiled = self.policies.current
        policy = compiled.policy
        priority = priority_of(policy.priorities, caller.team, caller.key, caller.priority, request.body)
        model = request.body["model"]
        if model != AUTO:
            model = compiled.aliases.target_of(model) or model
        embeddings_cache = policy.embeddings_cache if request.api == EMBEDDINGS else None
        if model != AUTO:
            target = self.catalog.resolve(model, policy, request.request_id)
            return Routing(target, EXPLICIT_RULE, None, compiled, cache=embeddings_cache, priority=priority)
        if request.api == EMBEDDINGS:
            return self._embeddings(compiled, request, priority)
        facts = self.facts(request, caller, policy, priority)
        await prepare_embeddings(compiled, facts, explain=explain)
        decision = decide(compiled, facts, explain=explain)
        target = self.catalog.for_decision(decision, policy, request.request_id)
        return Routing(target, decision.rule, decision, compiled, facts, decision.cache, priority)

    def _embeddings(self, compiled: CompiledPolicy, request: ChatRequest, priority: PriorityName) -> Routing:
        route = compiled.policy.embeddings_route
        if route is None:
            raise InvalidRequest(
                f"Policy '{compiled.name}' routes no embeddings for model 'auto' (it sets no "
                "embeddings_route): name an embedding route or deployment as the model.",
                param="model",
            )
        target = self.catalog.resolve(route, compiled.policy, request.request_id)
        cache = compiled.policy.embeddings_cache
        return Routing(target, EMBEDDINGS_RULE, None, compiled, cache=cache, priority=priority)

    async def explain(self, request: ChatRequest, caller: Caller) -> dict[str, Any]:
        """What the request path would do with this request, and why, without calling any model: the
        same routing code, with every rule and signal evaluated (embeddings off the event loop)."""
        return self.explained(await self.route(request, caller, explain=True))

    def explained(self, routing: Routing) -> dict[str, Any]:
        """A routing decided with `explain=True`, as explain's JSON."""
        target = routing.target
        if routing.decision is not None:
            explained = routing.decision.as_json()
        else:
            explained = {"rule": routing.rule, "route": target.route}
        explained["policy"] = routing.policy.name
        explained["priority"] = routing.priority
        explained["candidates"] = [
            {
                "route": candidate.route,
                "deployment": candidate.provider.deployment.name,
                "usable": self.catalog.deployment_usable(candidate.provider.deployment.name),
            }
            for candidate in target.candidates
        ]
        return explained

    def reroute(self, routing: Routing, route: str, budget: str, request: ChatRequest) -> Routing:
        """The policy's zero-cost route for a caller whose budget is spent, if it really is free."""
        policy = routing.policy.policy
        target = self.catalog.resolve(route, policy, request.request_id)
        for candidate in target.candidates:
            price = self._prices.price(policy, candidate.route, candidate.provider.deployment.name)
            if price is None or price.input or price.output:
                raise BudgetExceeded(
                    f"Budget exhausted: the {budget} is used up, and route '{route}' that "
                    "the policy names for this case is not free."
                )
        return Routing(
            target,
            f"{routing.rule} (budget exhausted)",
            routing.decision,
            routing.policy,
            cache=routing.cache,
            priority=routing.priority,
        )

    def downgrade(self, routing: Routing, route: str, request: ChatRequest) -> Routing:
        """The route admission control sends a request to when its own would miss its objective; the
        rule's cache directive still applies (a downgraded answer is kept and found like any other)."""
        target = self.catalog.resolve(route, routing.policy.policy, request.request_id)
        return Routing(
            target, f"{routing.rule} (downgraded)", routing.decision, routing.policy, routing.facts,
            routing.cache, routing.priority,
        )  # fmt: skip
