"""Which budget lines a request counts against, and how periods reset: a new UTC day or month is a new
line (a new counter), so spend before the boundary no longer counts after it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.script import prompt_tokens
from gateway.limits.budget_counters import InProcessBudgetCounters, Reservation
from gateway.limits.budgets import (
    IMAGE_TOKENS_AT_MOST,
    Budgets,
    SpendLimit,
    budget_lines,
    prompt_tokens_at_most,
    worst_case_nano,
)
from gateway.pricing import per_million
from gateway.tokens import TokenCounter


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


BUDGETS = Budgets(
    teams={"search": SpendLimit(daily_usd=1.0, monthly_usd=20.0), "*": SpendLimit(daily_usd=0.5)},
    keys={"k1": SpendLimit(daily_usd=0.2, when_exhausted="local")},
)


def test_a_caller_counts_against_its_team_and_key_budgets() -> None:
    check = budget_lines(BUDGETS, "search", "k1", at("2026-11-26T12:00:00"))
    assert [line.key for line in check.lines] == [
        "team:search:day:2026-11-26",
        "team:search:month:2026-11",
        "key:k1:day:2026-11-26",
    ]
    assert [line.limit_nano for line in check.lines] == [1_000_000_000, 20_000_000_000, 200_000_000]
    assert check.lines[0].name == "team search daily budget ($1)"
    assert check.when_exhausted == {
        "team:search:day:2026-11-26": None,
        "team:search:month:2026-11": None,
        "key:k1:day:2026-11-26": "local",
    }


def test_every_other_team_gets_its_own_copy_of_the_star_budget() -> None:
    ops = budget_lines(BUDGETS, "ops", None, at("2026-11-26T12:00:00"))
    web = budget_lines(BUDGETS, "web", None, at("2026-11-26T12:00:00"))
    assert [line.key for line in ops.lines] == ["team:ops:day:2026-11-26"]
    assert [line.key for line in web.lines] == ["team:web:day:2026-11-26"]
    assert budget_lines(BUDGETS, None, None, at("2026-11-26T12:00:00")).empty


def test_periods_end_at_utc_midnight_and_on_the_first_of_the_month() -> None:
    before = budget_lines(BUDGETS, "search", None, at("2026-12-31T23:59:59"))
    after = budget_lines(BUDGETS, "search", None, at("2027-01-01T00:00:00"))
    day, month = before.lines
    assert day.resets_at == at("2027-01-01T00:00:00") == month.resets_at
    assert [line.key for line in after.lines] == ["team:search:day:2027-01-01", "team:search:month:2027-01"]
    assert after.lines[0].resets_at == at("2027-01-02T00:00:00")
    assert after.lines[1].resets_at == at("2027-02-01T00:00:00")


def test_spend_before_midnight_does_not_count_after_it(bg: BackgroundLoop) -> None:
    counters = InProcessBudgetCounters()
    evening = budget_lines(BUDGETS, "search", None, at("2026-11-26T23:59:00"))
    morning = budget_lines(BUDGETS, "search", None, at("2026-11-27T00:01:00"))

    async def scenario() -> tuple[object, object]:
        spent = await counters.reserve(evening.lines, 1_000_000_000)  # the whole daily budget
        assert isinstance(spent, Reservation)
        late = await counters.reserve(evening.lines, 1)
        early = await counters.reserve(morning.lines, 1)
        return late, early

    late, early = bg.run(scenario())
    assert not isinstance(late, Reservation)  # still the same day: exhausted
    assert isinstance(early, Reservation)  # a new day: a new line
    # The month line is shared by both days and kept counting.
    assert counters.last_known("team:search:month:2026-11") == 1_000_000_001


def test_the_worst_case_is_every_prompt_token_and_the_longest_answer() -> None:
    price = per_million(1000, 10000)  # $0.001 and $0.01 per token
    assert worst_case_nano(price, prompt_tokens=4, max_output_tokens=9) == 94_000_000


def test_a_star_key_budget_gives_every_other_key_its_own() -> None:
    budgets = Budgets(keys={"*": SpendLimit(daily_usd=0.1), "k1": SpendLimit(daily_usd=5.0)})
    own = budget_lines(budgets, None, "k1", at("2026-11-26T12:00:00"))
    other = budget_lines(budgets, None, "k2", at("2026-11-26T12:00:00"))
    assert [(line.key, line.limit_nano) for line in own.lines] == [("key:k1:day:2026-11-26", 5_000_000_000)]
    assert [(line.key, line.limit_nano) for line in other.lines] == [("key:k2:day:2026-11-26", 100_000_000)]
    assert other.lines[0].metric == "key daily budget"  # no key id in metric labels


PROMPTS: list[dict[str, object]] = [
    {"messages": [{"role": "user", "content": "hi"}]},
    {
        "messages": [
            {"role": "system", "content": "You answer in French, briefly and politely, with sources."},
            {"role": "user", "content": "Quelle est la capitale de l'Australie ? 1234567890 ©®™"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": -3, "sky": "clear"}'},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}},
        },
    },
]


@pytest.mark.parametrize("body", PROMPTS)
def test_the_reserved_prompt_is_above_what_tokenizers_and_the_fake_upstream_count(
    body: dict[str, Any],
) -> None:
    tokens = TokenCounter()
    bound = prompt_tokens_at_most(tokens, body)
    messages = body["messages"]
    assert bound > tokens.count_messages(messages)  # plain cl100k, as before
    assert bound > prompt_tokens(messages, body.get("tools"))  # the fake's arithmetic, tools included
    # A tokenizer that takes a quarter more tokens than cl100k for the same text is still covered.
    texts = "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
    assert bound >= 1.25 * tokens.count_text(texts)


def test_an_image_is_reserved_at_the_most_a_provider_bills_for_one() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part, part]}]
    }
    bound = prompt_tokens_at_most(TokenCounter(), body)
    assert 2 * IMAGE_TOKENS_AT_MOST < bound < 2 * IMAGE_TOKENS_AT_MOST + 100  # the data URL is not text
