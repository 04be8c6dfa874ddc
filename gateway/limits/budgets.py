"""Spend budgets per team and per key, per UTC day and month, as a policy writes them; which budget
lines a request counts against, and its worst-case cost to reserve before calling.

The counting itself (atomic reserve and settle, in-process or in Redis) is `budget_counters`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.limits.budget_counters import NANO_PER_USD, BudgetLine
from gateway.pricing import TokenPrice
from gateway.tokens import TokenCounter, image_parts

# Each team (or key) without a budget of its own gets one like this (its own, not a shared pot).
EVERY = "*"
# The answer's worst-case length when neither the client nor the price map says.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# The prompt as an upstream counts it can exceed what cl100k counts: other tokenizers (Llama's,
# Claude's) take up to ~20% more tokens for the same text, and chat templates add their own. The
# reservation takes the count with this margin, plus a fixed allowance for the template.
PROMPT_MARGIN = 1.25
PROMPT_TEMPLATE_TOKENS = 16
# An image part, at most, as the dearest providers bill one (OpenAI high detail, Claude's 1568 px).
IMAGE_TOKENS_AT_MOST = 2_000


class SpendLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    daily_usd: Annotated[float | None, Field(gt=0)] = None
    monthly_usd: Annotated[float | None, Field(gt=0)] = None
    # A zero-cost route to send the caller to once this budget is spent, instead of a 429.
    when_exhausted: str | None = None


class Budgets(BaseModel):
    """`teams` by team name and `keys` by key id; `*` gives every other team or key a budget of its
    own (not a shared pot)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teams: dict[str, SpendLimit] = {}
    keys: dict[str, SpendLimit] = {}
    # When the counters cannot be reached (Redis down): `open` lets each replica count on its own, from
    # the spend it last saw (logged; what it counts is added to Redis once it is back), `closed` refuses
    # those that count against a budget with a 503 until the counters are back.
    when_unavailable: Literal["open", "closed"] = "open"
    # A request refused only because requests in flight hold the rest of a budget (they reserved their
    # worst case and will likely settle below it) waits up to this long for them to settle, then is
    # refused; 0 refuses at once.
    wait_for_in_flight_seconds: float = Field(default=5.0, ge=0, le=60)

    def limits_for(self, team: str | None, key: str | None) -> list[tuple[str, str, SpendLimit]]:
        """(kind, name, limit) for every budget the caller counts against."""
        found = []
        if team is not None:
            limit = self.teams.get(team) or self.teams.get(EVERY)
            if limit is not None:
                found.append(("team", team, limit))
        if key is not None:
            limit = self.keys.get(key) or self.keys.get(EVERY)
            if limit is not None:
                found.append(("key", key, limit))
        return found


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """The budget lines of one request, with where to send it when one is exhausted."""

    lines: tuple[BudgetLine, ...]
    when_exhausted: Mapping[str, str | None]  # line key -> route

    @property
    def empty(self) -> bool:
        return not self.lines


NO_BUDGETS = BudgetCheck((), MappingProxyType({}))


def budget_lines(budgets: Budgets, team: str | None, key: str | None, now: float) -> BudgetCheck:
    limits = budgets.limits_for(team, key)
    if not limits:
        return NO_BUDGETS
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.strftime("%Y-%m-%d")
    month = moment.strftime("%Y-%m")
    lines: list[BudgetLine] = []
    routes: dict[str, str | None] = {}
    for kind, name, limit in limits:
        for period, usd, period_id, resets in (
            ("daily", limit.daily_usd, f"day:{day}", _next_day(moment)),
            ("monthly", limit.monthly_usd, f"month:{month}", _next_month(moment)),
        ):
            if usd is None:
                continue
            line = BudgetLine(
                name=f"{kind} {name} {period} budget (${usd:g})",
                key=f"{kind}:{name}:{period_id}",
                limit_nano=round(usd * NANO_PER_USD),
                resets_at=resets,
                metric=f"{kind} {period} budget",
            )
            lines.append(line)
            routes[line.key] = limit.when_exhausted
    return BudgetCheck(tuple(lines), routes)


def prompt_tokens_at_most(
    tokens: TokenCounter, body: Mapping[str, object], message_tokens: int | None = None
) -> int:
    """An upper bound on the prompt tokens an upstream will bill for this request: the messages
    (`message_tokens`: their cl100k count, when already made), tool calls and their arguments, the
    tool definitions and the response schema, with `PROMPT_MARGIN`, plus images at their largest."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    if message_tokens is None:
        message_tokens = tokens.count_messages(messages)
    extras: list[str] = []
    images = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        images += image_parts(message.get("content"))
        for extra in ("tool_calls", "function_call", "name"):
            if extra in message:
                extras.append(_json_text(message[extra]))
    for schema in ("tools", "functions", "response_format"):
        if schema in body:
            extras.append(_json_text(body[schema]))
    counted = message_tokens + (tokens.count_text("\n".join(extras)) if extras else 0)
    return int(counted * PROMPT_MARGIN) + 1 + PROMPT_TEMPLATE_TOKENS + images * IMAGE_TOKENS_AT_MOST


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def worst_case_nano(price: TokenPrice, prompt_tokens: int, max_output_tokens: int) -> int:
    """What the request can cost at most: every prompt token uncached, the longest answer allowed."""
    return round((prompt_tokens * price.input + max_output_tokens * price.output) * NANO_PER_USD)


def nano(usd: float | None) -> int:
    return round((usd or 0.0) * NANO_PER_USD)


def period_ends(moment: datetime) -> tuple[float, float]:
    """When the day and the month that hold `moment` (UTC) end."""
    return _next_day(moment), _next_month(moment)


def _next_day(moment: datetime) -> float:
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp() + 86_400


def _next_month(moment: datetime) -> float:
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()
