"""What a deployment charges per token: litellm's price map, read offline from the file litellm ships
(without importing litellm), overridden per deployment; a managed local model costs nothing unless
priced. An unknown price is `None`, never a silent $0 — a mispriced model must be visible."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Deployment

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"
PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per token."""

    input: float
    output: float
    # Input tokens served from the provider's prompt cache; `input` when the provider has no discount.
    cached_input: float

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Prompt tokens include the cached ones (as OpenAI reports them); reasoning tokens are part
        of the completion tokens."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + completion_tokens * self.output
        )


FREE = TokenPrice(0.0, 0.0, 0.0)


def litellm_price_map_path() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PRICE_MAP_FILE
    return path if path.is_file() else None


def load_price_map(path: Path | None = None) -> dict[str, Mapping[str, Any]]:
    """The price map as litellm ships it (empty when litellm is not installed)."""
    path = path or litellm_price_map_path()
    if path is None:
        return {}
    data = json.loads(path.read_text())
    return {name: entry for name, entry in data.items() if isinstance(entry, dict)}


class PriceBook:
    def __init__(
        self, deployments: Mapping[str, Deployment], price_map: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self._deployments = dict(deployments)
        self._prices = {name: _price(deployment, price_map) for name, deployment in deployments.items()}
        self._batch_prices = {
            name: _batch_price(deployment, price_map, self._prices[name])
            for name, deployment in deployments.items()
            if deployment.batch_api
        }
        self._max_output = {
            name: _max_output(deployment, price_map) for name, deployment in deployments.items()
        }

    def price_of(self, deployment: str) -> TokenPrice | None:
        return self._prices.get(deployment)

    def batch_price_of(self, deployment: str) -> TokenPrice | None:
        """What a line sent through the deployment's own Batch API costs (`Deployment.batch_api`):
        the configured batch price, else litellm's map's (`input_cost_per_token_batches`), else the
        deployment's ordinary price (a discount nobody stated is not assumed)."""
        return self._batch_prices.get(deployment, self._prices.get(deployment))

    def deployment(self, name: str) -> Deployment | None:
        return self._deployments.get(name)

    def max_output_of(self, deployment: str) -> int | None:
        """The longest answer the model can give, as the price map says (for worst-case costs)."""
        return self._max_output.get(deployment)

    def unpriced(self) -> list[str]:
        """Deployments whose cost cannot be known: worth a warning at start-up."""
        return sorted(name for name, price in self._prices.items() if price is None)


def _price(deployment: Deployment, price_map: Mapping[str, Mapping[str, Any]]) -> TokenPrice | None:
    if deployment.price is not None:
        return per_million(deployment.price.input_per_mtok, deployment.price.output_per_mtok)
    if deployment.provider in ("managed-local", "local-embedder"):
        return FREE
    for name in _candidate_names(deployment):
        entry = price_map.get(name)
        if entry is None:
            continue
        listed_in, listed_out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if isinstance(listed_in, int | float) and isinstance(listed_out, int | float):
            cached = entry.get("cache_read_input_token_cost")
            listed_cached = float(cached) if isinstance(cached, int | float) else float(listed_in)
            return TokenPrice(float(listed_in), float(listed_out), listed_cached)
    return None


def _batch_price(
    deployment: Deployment, price_map: Mapping[str, Mapping[str, Any]], ordinary: TokenPrice | None
) -> TokenPrice | None:
    configured = deployment.price
    if configured is not None and configured.batch_input_per_mtok is not None:
        output = configured.batch_output_per_mtok
        return per_million(
            configured.batch_input_per_mtok, configured.output_per_mtok if output is None else output
        )
    if configured is None:
        for name in _candidate_names(deployment):
            entry = price_map.get(name) or {}
            listed_in, listed_out = (
                entry.get("input_cost_per_token_batches"),
                entry.get("output_cost_per_token_batches"),
            )
            if isinstance(listed_in, int | float) and isinstance(listed_out, int | float):
                return TokenPrice(float(listed_in), float(listed_out), float(listed_in))
    return ordinary


def _max_output(deployment: Deployment, price_map: Mapping[str, Mapping[str, Any]]) -> int | None:
    for name in _candidate_names(deployment):
        entry = price_map.get(name)
        value = entry.get("max_output_tokens") if entry is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _candidate_names(deployment: Deployment) -> list[str]:
    """litellm keys most models by their bare name, some by `provider/name`."""
    model = deployment.model
    bare = model.split("/", 1)[1] if "/" in model else model
    provider = "anthropic" if deployment.provider == "anthropic" else "openai"
    return [model, bare, f"{provider}/{bare}"]


def per_million(input_per_mtok: float, output_per_mtok: float) -> TokenPrice:
    """A price written per million tokens (as in configuration files), with no cache discount."""
    per_in = input_per_mtok / PER_MILLION
    return TokenPrice(per_in, output_per_mtok / PER_MILLION, per_in)


@dataclass(frozen=True, slots=True)
class Spend:
    """What a request cost, what the reference route would have charged for the same tokens, and the
    difference. Each is None when a price is unknown: an unknown is never reported as $0."""

    cost_usd: float | None
    reference_usd: float | None

    @property
    def saved_usd(self) -> float | None:
        if self.cost_usd is None or self.reference_usd is None:
            return None
        return self.reference_usd - self.cost_usd


def spend_of(
    price: TokenPrice | None,
    reference: TokenPrice | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
) -> Spend:
    return Spend(
        price.cost(prompt_tokens, completion_tokens, cached_tokens) if price else None,
        reference.cost(prompt_tokens, completion_tokens, cached_tokens) if reference else None,
    )
