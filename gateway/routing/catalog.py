"""What a `model` name means: `auto`, a route alias or a deployment, resolved to ordered candidates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.errors import ModelNotFound
from gateway.providers.base import Provider

AUTO = "auto"


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
    def __init__(self, config: GatewayConfig, providers: Mapping[str, Provider]) -> None:
        self.config = config
        self.providers = dict(providers)
        self._routes = {
            route: tuple(Candidate(route, self.providers[name]) for name in members)
            for route, members in config.routes.items()
        }

    def resolve(self, model: str) -> Target:
        if model == AUTO:
            route = self.config.default_route
            candidates = self._routes[route]
            fallback = self.config.fallback_route
            if fallback and fallback != route:
                seen = {c.provider.deployment.name for c in candidates}
                candidates += tuple(
                    c for c in self._routes[fallback] if c.provider.deployment.name not in seen
                )
            return Target(route, candidates, explicit=False)
        if model in self._routes:
            return Target(model, self._routes[model], explicit=True)
        provider = self.providers.get(model)
        if provider is None:
            raise ModelNotFound(
                f"The model '{model}' does not exist or you do not have access to it.", param="model"
            )
        return Target(model, (Candidate(model, provider),), explicit=True)

    def model_names(self) -> list[str]:
        return [AUTO, *self._routes, *self.providers]
