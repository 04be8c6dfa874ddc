"""What an answer costs on the request path: a route's own price when the policy sets one, else its
deployment's; and, for the record, what the policy's reference route would have charged."""

from __future__ import annotations

from gateway.ledger.record import CacheOutcome
from gateway.policy.schema import Policy
from gateway.pricing import FREE, PriceBook, Spend, TokenPrice, per_million, spend_of
from gateway.wire import Usage


class RoutePrices:
    """Prices looked up once per live policy: a request asks for them two or three times."""

    def __init__(self, prices: PriceBook) -> None:
        self.book = prices
        # The policy the memo below holds prices for (a reload brings a new policy object).
        self._policy: Policy | None = None
        self._prices: dict[tuple[str | None, str], TokenPrice | None] = {}
        self._reference: TokenPrice | None = None

    def price(self, policy: Policy | None, route: str | None, deployment: str) -> TokenPrice | None:
        """The route's own price when the policy sets one, else the deployment's."""
        if policy is not self._policy:
            self._forget(policy)
        key = (route, deployment)
        try:
            return self._prices[key]
        except KeyError:
            price = self._prices[key] = _route_price(policy, route) or self.book.price_of(deployment)
            return price

    def reference(self, policy: Policy | None) -> TokenPrice | None:
        """The price of the policy's reference route (its first deployment's, unless the route sets one)."""
        if policy is not self._policy:
            self._forget(policy)
        return self._reference

    def _forget(self, policy: Policy | None) -> None:
        self._policy, self._prices, self._reference = policy, {}, None
        first = reference_deployment(policy)
        if policy is not None and first is not None:
            self._reference = _route_price(policy, policy.reference_route) or self.book.price_of(first)

    def spend(
        self,
        policy: Policy | None,
        route: str | None,
        deployment: str | None,
        usage: Usage | None,
        cache: CacheOutcome = "miss",
        batch: bool = False,
    ) -> Spend | None:
        """The cost at the answering route's price, and at the policy's reference route's. An answer
        from the cache cost nothing; what it saved is what the reference route charges for its tokens.
        An answer from the deployment's own Batch API (`batch`) costs its batch price."""
        if usage is None:
            return None
        if cache != "miss":
            price: TokenPrice | None = FREE
        elif batch:
            price = self.book.batch_price_of(deployment or "")
        else:
            price = self.price(policy, route, deployment or "")
        return spend_of(
            price, self.reference(policy), usage.prompt_tokens, usage.completion_tokens, cached_tokens(usage)
        )


def reference_deployment(policy: Policy | None) -> str | None:
    """The deployment the policy's reference route would call first."""
    if policy is None or policy.reference_route is None:
        return None
    spec = policy.routes[policy.reference_route]
    return spec.deployments[0] if spec.deployments else next(iter(spec.split or {}))


def cached_tokens(usage: Usage | None) -> int:
    if usage is None:
        return 0
    return int((usage.details.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def _route_price(policy: Policy | None, route: str | None) -> TokenPrice | None:
    spec = policy.routes.get(route) if policy is not None and route is not None else None
    if spec is None or spec.price is None:
        return None
    return per_million(spec.price.input_per_mtok, spec.price.output_per_mtok)
