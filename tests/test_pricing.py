from __future__ import annotations

import pytest

from gateway.config import Deployment, Price
from gateway.pricing import FREE, PriceBook, TokenPrice, load_price_map


def deployment(**fields: object) -> Deployment:
    return Deployment.model_validate({"name": "d", **fields})


@pytest.fixture(scope="module")
def price_map() -> dict[str, object]:
    prices = load_price_map()
    assert len(prices) > 1000, "litellm's bundled price map was not found"
    return prices  # type: ignore[return-value]


def test_prices_come_from_litellms_bundled_map(price_map: dict[str, object]) -> None:
    book = PriceBook(
        {
            "gpt": deployment(provider="openai", model="gpt-4o"),
            "claude": deployment(provider="anthropic", model="claude-haiku-4-5"),
            "claude-prefixed": deployment(provider="anthropic", model="anthropic/claude-haiku-4-5"),
        },
        price_map,  # type: ignore[arg-type]
    )
    assert book.price_of("gpt") == TokenPrice(2.5e-06, 1e-05, 1.25e-06)
    assert book.price_of("claude") == book.price_of("claude-prefixed") == TokenPrice(1e-06, 5e-06, 1e-07)


def test_overrides_local_models_and_unknown_models(price_map: dict[str, object]) -> None:
    book = PriceBook(
        {
            "custom": deployment(
                provider="openai", model="gpt-4o", price=Price(input_per_mtok=1, output_per_mtok=2)
            ),
            "local": deployment(provider="managed-local", model="smollm2"),
            "mystery": deployment(provider="openai", model="no-such-model-anywhere"),
        },
        price_map,  # type: ignore[arg-type]
    )
    assert book.price_of("custom") == TokenPrice(1e-06, 2e-06, 1e-06)
    assert book.price_of("local") == FREE
    assert book.price_of("mystery") is None  # unknown is not $0
    assert book.unpriced() == ["mystery"]


def test_cost_counts_cached_tokens_at_their_own_price() -> None:
    price = TokenPrice(input=2e-6, output=8e-6, cached_input=0.5e-6)
    assert price.cost(1000, 500) == pytest.approx(1000 * 2e-6 + 500 * 8e-6)
    assert price.cost(1000, 500, cached_tokens=400) == pytest.approx(600 * 2e-6 + 400 * 0.5e-6 + 500 * 8e-6)
    assert price.cost(100, 0, cached_tokens=999) == pytest.approx(100 * 0.5e-6)  # never more cached than sent


def test_a_batch_api_deployment_has_its_batch_price(price_map: dict[str, object]) -> None:
    book = PriceBook(
        {
            "mapped": deployment(provider="openai", model="gpt-4o", batch_api=True),
            "configured": deployment(
                provider="openai",
                model="gpt-4o",
                batch_api=True,
                price=Price(
                    input_per_mtok=4, output_per_mtok=8, batch_input_per_mtok=1, batch_output_per_mtok=3
                ),
            ),
            "no-discount-said": deployment(
                provider="openai",
                model="gpt-4o",
                batch_api=True,
                price=Price(input_per_mtok=4, output_per_mtok=8),
            ),
            "synchronous": deployment(provider="openai", model="gpt-4o"),
        },
        price_map,  # type: ignore[arg-type]
    )
    assert book.batch_price_of("mapped") == TokenPrice(1.25e-06, 5e-06, 1.25e-06)  # litellm's batch price
    assert book.batch_price_of("configured") == TokenPrice(1e-06, 3e-06, 1e-06)
    # A price set by hand without a batch price: no discount is assumed.
    assert book.batch_price_of("no-discount-said") == book.price_of("no-discount-said")
    assert book.batch_price_of("synchronous") == book.price_of("synchronous")
