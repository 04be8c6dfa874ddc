"""What the finance dashboard shows, read from the hourly rollup (`ledger.rollup`), never from a
scan of the ledger: totals, spend, savings and estimated energy per day by a group, a table by that group,
latency percentiles per route, error rates per deployment, and budget burn with a forecast to the period's
end.

A filter's period is whole UTC days (`since` inclusive, `until` exclusive), so the rollup's hours answer it
exactly: the totals equal the ledger's for the same days.

Energy is an estimate (`gateway/energy.py`). The rollup adds an unknown figure as 0 and counts the
requests that had one (`energy_estimated`); energy saved is summed over requests whose own and reference
figures are both known. `known_energy` turns the sums of groups with no estimate into None, which the
page shows as a dash and the CSV as an empty cell, never as 0.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from gateway.ledger.rollup import LATENCY_BOUNDS_MS, LATENCY_COLUMNS
from gateway.limits.budgets import EVERY, Budgets

GROUPS = ("team", "route", "model", "rule", "deployment", "cache")
DEFAULT_DAYS = 30
# A budget this far spent (or forecast to be by the period's end) is flagged.
NEAR_LIMIT = 0.8
TOTALS = (
    "requests", "cost_usd", "reference_usd", "saved_usd", "errors", "cached_answers", "unpriced",
    "prompt_tokens", "completion_tokens", "energy_wh", "reference_energy_wh", "saved_energy_wh",
    "energy_estimated",
)  # fmt: skip
ENERGY = ("energy_wh", "reference_energy_wh", "saved_energy_wh")
# Energy in the CSV export: named as estimates, empty where nothing is known.
ENERGY_CSV = tuple(f"estimated_{name}" for name in ENERGY)


class Readable(Protocol):
    def read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]: ...


class BadFilter(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Filters:
    since: date
    until: date  # exclusive
    team: str | None
    group: str

    @classmethod
    def parse(
        cls, since: str | None, until: str | None, team: str | None, group: str | None, today: date
    ) -> Filters:
        def day(value: str | None, name: str, default: date) -> date:
            if not value:
                return default
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise BadFilter(f"{name} must be a day like 2026-11-01, not {value!r}", name) from None

        end = day(until, "until", today + timedelta(days=1))
        start = day(since, "since", end - timedelta(days=DEFAULT_DAYS))
        if start >= end:
            raise BadFilter("since must be before until", "since")
        chosen = group or "team"
        if chosen not in GROUPS:
            raise BadFilter(f"group must be one of {', '.join(GROUPS)}", "group")
        return cls(start, end, team or None, chosen)

    @property
    def bounds(self) -> tuple[int, int]:
        return _epoch(self.since), _epoch(self.until)

    def where(self) -> tuple[str, list[object]]:
        low, high = self.bounds
        params: list[object] = [low, high]
        if self.team is None:
            return "hour >= {p} AND hour < {p}", params
        return "hour >= {p} AND hour < {p} AND team = {p}", [*params, self.team]

    def query(self) -> dict[str, str]:
        """The filters as query parameters (for links: the CSV export of exactly this view)."""
        values = {"since": self.since.isoformat(), "until": self.until.isoformat(), "group": self.group}
        return {**values, "team": self.team} if self.team else values


@dataclass
class SpendView:
    filters: Filters
    totals: dict[str, float]
    days: list[str]
    # group value -> spend / saved per day, aligned with `days`
    spend_by_day: dict[str, list[float]]
    saved_by_day: dict[str, list[float]]
    rows: list[dict[str, Any]]
    teams: list[str]
    latency: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    # group value -> estimated Wh per day, aligned with `days`; None for a day with no estimate
    energy_by_day: dict[str, list[float | None]] = field(default_factory=dict)
    # The totals' energy as `known_energy` gives it (each row holds its own under "energy").
    energy: dict[str, float | None] = field(default_factory=dict)


def known_energy(sums: Mapping[str, float]) -> dict[str, float | None]:
    """A row's or the totals' energy sums with None where nothing is known: no request of theirs had
    an estimate (`energy_estimated`), or, for the reference's and the saving, none had one for the
    reference (a sum of 0 there)."""
    if not sums["energy_estimated"]:
        return {"energy_wh": None, "reference_energy_wh": None, "saved_energy_wh": None}
    reference = sums["reference_energy_wh"] or None
    saved = sums["saved_energy_wh"] if reference is not None else None
    return {"energy_wh": sums["energy_wh"], "reference_energy_wh": reference, "saved_energy_wh": saved}


def energy_text(wh: float) -> str:
    """Watt-hours for people to read, to three significant digits, in Wh below 1 kWh: "0.0301 Wh",
    "12.3 Wh", "4.56 kWh", "1.2 MWh"."""
    size = float(f"{abs(wh):.3g}")  # 999.96 Wh reads 1 kWh
    unit, scale = next(
        ((unit, scale) for unit, scale in (("MWh", 1e6), ("kWh", 1e3)) if size >= scale), ("Wh", 1.0)
    )
    scaled = wh / scale
    decimals = max(2 - math.floor(math.log10(abs(scaled))), 0) if scaled else 0
    text = f"{scaled:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def spend_view(store: Readable, filters: Filters, budgets: Budgets | None = None) -> SpendView:
    where, params = filters.where()
    sums = ", ".join(f"SUM({name})" for name in TOTALS)
    group = filters.group
    per_day = store.read(
        f"SELECT (hour / 86400) * 86400, {group}, SUM(cost_usd), SUM(saved_usd), SUM(energy_wh)"
        f" FROM spend_hourly WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2",
        params,
    )
    days = _days(filters)
    spend: dict[str, list[float]] = {}
    saved: dict[str, list[float]] = {}
    energy: dict[str, list[float | None]] = {}
    for day_start, key, cost, save, wh in per_day:
        index = days.index(_day_name(int(day_start)))
        name = _label(key)
        spend.setdefault(name, [0.0] * len(days))[index] += float(cost)
        saved.setdefault(name, [0.0] * len(days))[index] += float(save)
        # Every group gets a series (the charts colour groups alike); a day without an estimate stays None.
        day_energy = energy.setdefault(name, [None] * len(days))
        if wh:
            day_energy[index] = (day_energy[index] or 0.0) + float(wh)
    table = store.read(
        f"SELECT {group}, {sums} FROM spend_hourly WHERE {where}"
        f" GROUP BY {group} ORDER BY SUM(cost_usd) DESC, {group}",
        params,
    )
    # The teams to filter by: those with traffic in the period (not a scan of all time).
    low, high = filters.bounds
    teams = [
        str(team)
        for (team,) in store.read(
            "SELECT DISTINCT team FROM spend_hourly WHERE hour >= {p} AND hour < {p} ORDER BY team",
            [low, high],
        )
    ]
    rows: list[dict[str, Any]] = [{group: _label(row[0]), **_numbers(row[1:])} for row in table]
    for row in rows:
        row["energy"] = known_energy(row)
    # The table's groups add up to the period's totals: no query of their own.
    totals = {name: float(sum(row[name] for row in rows)) for name in TOTALS}
    view = SpendView(
        filters,
        totals,
        days,
        spend,
        saved,
        rows,
        [team for team in teams if team],
    )
    view.energy_by_day = energy
    view.energy = known_energy(totals)
    view.latency = _latency(store, where, params)
    view.errors = _errors(store, where, params)
    if budgets is not None:
        view.budgets = budget_burn(store, budgets, time.time())
    return view


def as_csv(view: SpendView) -> str:
    """Exactly the view's table: one row per group value, with its sums; estimated energy last, empty
    where nothing is known."""
    out = io.StringIO()
    writer = csv.writer(out)
    money = [name for name in TOTALS if name not in ENERGY]
    writer.writerow([view.filters.group, *money, *ENERGY_CSV])
    for row in view.rows:
        known = row["energy"]
        writer.writerow(
            [
                row[view.filters.group] or "",
                *(_csv_number(row[name]) for name in money),
                *("" if known[name] is None else _csv_number(known[name]) for name in ENERGY),
            ]
        )
    return out.getvalue()


def budget_burn(store: Readable, budgets: Budgets, now: float) -> list[dict[str, Any]]:
    """Each team budget's spend in its current UTC day and month, and the month's forecast at the pace so
    far; `near` when spent or forecast reaches NEAR_LIMIT of the limit."""
    moment = datetime.fromtimestamp(now, UTC)
    day_start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    month_start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    month_end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    spent = {
        str(team): (float(month or 0), float(day or 0))
        for team, month, day in store.read(
            "SELECT team, SUM(cost_usd), SUM(CASE WHEN hour >= {p} THEN cost_usd ELSE 0 END)"
            " FROM spend_hourly WHERE hour >= {p} GROUP BY team",
            [int(day_start.timestamp()), int(month_start.timestamp())],
        )
    }
    elapsed = max(now - month_start.timestamp(), 3600.0)
    length = month_end.timestamp() - month_start.timestamp()
    teams = {name for name in budgets.teams if name != EVERY} | (
        {team for team in spent if team} if EVERY in budgets.teams else set()
    )
    burn = []
    for team in sorted(teams):
        limit = budgets.teams.get(team) or budgets.teams[EVERY]
        month, day = spent.get(team, (0.0, 0.0))
        forecast = month / elapsed * length
        row: dict[str, Any] = {"team": team, "month_usd": month, "day_usd": day, "forecast_usd": forecast}
        row["monthly_limit"], row["daily_limit"] = limit.monthly_usd, limit.daily_usd
        shares = [
            value / cap
            for value, cap in (
                (forecast, limit.monthly_usd),
                (month, limit.monthly_usd),
                (day, limit.daily_usd),
            )
            if cap
        ]
        row["near"] = bool(shares) and max(shares) >= NEAR_LIMIT
        burn.append(row)
    return burn


def _latency(store: Readable, where: str, params: list[object]) -> list[dict[str, Any]]:
    buckets = ", ".join(f"SUM({column})" for column in LATENCY_COLUMNS)
    rows = store.read(
        f"SELECT route, SUM(requests), {buckets} FROM spend_hourly WHERE {where} AND route <> ''"
        " GROUP BY route ORDER BY route",
        params,
    )
    return [
        {
            "route": route,
            "requests": int(count),
            "p50_ms": _quantile(counts, 0.5),
            "p95_ms": _quantile(counts, 0.95),
        }
        for route, count, *counts in rows
    ]


def _errors(store: Readable, where: str, params: list[object]) -> list[dict[str, Any]]:
    rows = store.read(
        f"SELECT deployment, SUM(requests), SUM(errors) FROM spend_hourly WHERE {where} AND deployment <> ''"
        " GROUP BY deployment ORDER BY deployment",
        params,
    )
    return [
        {"deployment": name, "requests": int(total), "errors": int(bad), "error_rate": int(bad) / int(total)}
        for name, total, bad in rows
    ]


def _quantile(counts: Sequence[Any], share: float) -> float | None:
    """The latency below which `share` of requests finished, interpolated inside its bucket (the last,
    unbounded bucket answers with its lower bound)."""
    values = [int(count) for count in counts]
    total = sum(values)
    if not total:
        return None
    wanted, seen = share * total, 0
    for index, count in enumerate(values):
        if count and seen + count >= wanted:
            low = LATENCY_BOUNDS_MS[index - 1] if index else 0
            if index == len(LATENCY_BOUNDS_MS):
                return float(low)
            return low + (LATENCY_BOUNDS_MS[index] - low) * (wanted - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


def _numbers(values: Sequence[Any]) -> dict[str, float]:
    return {name: float(value or 0) for name, value in zip(TOTALS, values, strict=True)}


def _csv_number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def _label(value: Any) -> str:
    return str(value) if value else "(none)"


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _days(filters: Filters) -> list[str]:
    count = (filters.until - filters.since).days
    return [(filters.since + timedelta(days=index)).isoformat() for index in range(count)]


def _day_name(start: int) -> str:
    return datetime.fromtimestamp(start, UTC).date().isoformat()
