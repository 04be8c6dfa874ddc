"""What a `model` name means: a route alias or a deployment, or (for `auto`) the policy's decision,
resolved to the candidates tried in order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import ModelNotFound
from gateway.policy.aliases import AUTO
from gateway.policy.decide import Decision, route_order
from gateway.policy.schema import Policy
from gateway.providers.base import Provider
from gateway.routing.health import DeploymentHealth

__all__ = ["AUTO", "Candidate", "Catalog", "Target"]


@dataclass(frozen=True, slots=True)
class Candidate:
    route: str
    provider: Provider


@dataclass(frozen=True, slots=True)
class Target:
    """The candidates for one request in the order they are tried; `explicit` when the client
    named a route or deployment itself (then the gateway does not fall back to another route)."""

    route: str
    candidates: tuple[Candidate, ...]
    explicit: bool


class Catalog:
    def __init__(self, providers: Mapping[str, Provider], health: DeploymentHealth) -> None:
        self.providers = dict(providers)
        self._health = health

    def for_decision(self, decision: Decision, policy: Policy, request_id: str) -> Target:
        """The decided route's deployments, then the policy's fallback route's."""
        candidates = tuple(Candidate(decision.route, self.providers[name]) for name in decision.deployments)
        fallback = policy.fallback_route
        if fallback and fallback != decision.route:
            seen = set(decision.deployments)
            candidates += tuple(
                Candidate(fallback, self.providers[name])
                for name in route_order(policy.routes[fallback], request_id)
                if name not in seen
            )
        return Target(decision.route, candidates, explicit=False)

    def resolve(self, model: str, policy: Policy, request_id: str) -> Target:
        """A route alias or a deployment the client named."""
        route = policy.routes.get(model)
        if route is not None:
            order = route_order(route, request_id)
            return Target(
                model, tuple(Candidate(model, self.providers[name]) for name in order), explicit=True
            )
        provider = self.providers.get(model)
        if provider is None:
            raise ModelNotFound(
                f"The model '{model}' does not exist or you do not have access to it.", param="model"
            )
        return Target(model, (Candidate(model, provider),), explicit=True)

    def deployment_usable(self, name: str) -> bool:
        return self.providers[name].available and self._health.breaker(name).would_allow()

    def route_healthy(self, policy: Policy, route: str) -> bool | None:
        spec = policy.routes.get(route)
        if spec is None:
            return None
        members = spec.deployments if spec.deployments is not None else list(spec.split or {})
        return any(self.deployment_usable(name) for name in members)
