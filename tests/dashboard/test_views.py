"""The dashboard's views over a real SQLite ledger: days and groups add up to the ledger, latency
percentiles come from the rollup's histogram, budgets burn and forecast, and bad filters are named."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gateway.bench.dashboard import main as bench_main
from gateway.dashboard.views import BadFilter, Filters, as_csv, budget_burn, energy_text, spend_view
from gateway.ledger.record import SpendRecord
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.limits.budgets import Budgets, SpendLimit

DAY = date(2026, 3, 10)
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()


def record(
    n: int, at: float, team: str | None, route: str | None, cost: float | None, latency: float
) -> SpendRecord:
    return SpendRecord(
        id=f"r{n}", request_id=f"q{n}", at=at, team=team, key_id="k", policy="p", route=route, rule="r",
        deployment=None if route is None else f"{route}-d", model="m", stream=False,
        status=200 if route else 429, cost_usd=cost, reference_usd=None if cost is None else 1.0,
        latency_ms=latency,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> SqliteLedgerStore:
    opened = SqliteLedgerStore(tmp_path / "ledger.sqlite")
    opened.insert(
        [
            record(1, NOON, "search", "frontier", 0.5, 30.0),
            record(2, NOON + 60, "search", "frontier", 0.25, 700.0),
            record(3, NOON - 86400, "support", "local", 0.0, 8.0),  # the day before
            record(4, NOON, "support", None, 0.0, 1.0),  # refused before routing
            record(5, NOON + 3600, "search", "local", None, 20.0),  # no known price
        ]
    )
    return opened


def test_a_days_view_adds_up_to_the_ledger_by_day_group_and_route(store: SqliteLedgerStore) -> None:
    view = spend_view(store, Filters.parse("2026-03-09", "2026-03-11", None, "team", DAY))
    assert view.days == ["2026-03-09", "2026-03-10"]
    assert view.totals["requests"] == 5 and view.totals["cost_usd"] == 0.75 and view.totals["unpriced"] == 1
    assert view.spend_by_day == {"search": [0.0, 0.75], "support": [0.0, 0.0]}
    assert view.saved_by_day["search"] == [0.0, 1.25]  # two answers at 1.0 reference, 0.75 spent
    assert [(row["team"], row["requests"]) for row in view.rows] == [("search", 3.0), ("support", 2.0)]
    assert as_csv(view).splitlines()[1].startswith("search,3,0.75,2,1.25,0,")
    one_day = spend_view(store, Filters.parse("2026-03-10", "2026-03-11", "support", "route", DAY))
    assert [(row["route"], row["requests"]) for row in one_day.rows] == [("(none)", 1.0)]
    # Latency: the frontier's two answers took 30 and 700 ms (buckets 25-50 and 500-1000 ms).
    frontier = next(row for row in view.latency if row["route"] == "frontier")
    assert 25 < frontier["p50_ms"] <= 50 and 500 < frontier["p95_ms"] <= 1000
    assert {row["deployment"]: row["errors"] for row in view.errors} == {"frontier-d": 0, "local-d": 0}


def test_budgets_burn_and_forecast_and_flag_teams_near_their_limit(store: SqliteLedgerStore) -> None:
    budgets = Budgets(teams={"search": SpendLimit(monthly_usd=2.0), "*": SpendLimit(daily_usd=100.0)})
    # Ten days into March: search spent 0.75 so far, 0.75 x 31/10 by the month's end.
    burn = {
        row["team"]: row for row in budget_burn(store, budgets, datetime(2026, 3, 11, tzinfo=UTC).timestamp())
    }
    assert set(burn) == {"search", "support"}
    assert burn["search"]["month_usd"] == 0.75 and burn["search"]["day_usd"] == 0.0
    assert burn["search"]["forecast_usd"] == pytest.approx(0.75 * 31 / 10)
    assert burn["search"]["near"] is True  # forecast 2.33 >= 0.8 x 2.0
    assert burn["support"]["near"] is False and burn["support"]["daily_limit"] == 100.0


@pytest.mark.parametrize(
    ("since", "until", "group", "param"),
    [
        ("March", None, None, "since"),
        (None, "2026-13-01", None, "until"),
        ("2026-03-10", "2026-03-10", None, "since"),
        (None, None, "key_id", "group"),
    ],
)
def test_bad_filters_name_their_parameter(
    since: str | None, until: str | None, group: str | None, param: str
) -> None:
    with pytest.raises(BadFilter) as raised:
        Filters.parse(since, until, None, group, DAY)
    assert raised.value.param == param


def test_the_render_benchmark_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bench.json"
    assert (
        bench_main(["--records", "2000", "--rounds", "1", "--backends", "sqlite", "--json", str(output)]) == 0
    )
    printed = capsys.readouterr().out
    assert "30 days, all teams, by team" in printed and "PASS" in printed
    assert output.read_text().count("views_ms") == 1


def test_energy_adds_up_to_the_ledger_and_what_is_unknown_is_never_zero(tmp_path: Path) -> None:
    store = SqliteLedgerStore(tmp_path / "energy.sqlite")

    def answered(
        n: int, team: str, energy: float | None, reference: float | None, at: float = NOON
    ) -> SpendRecord:
        made = record(n, at, team, "frontier", 0.5, 30.0)
        made.energy_wh, made.reference_energy_wh = energy, reference
        return made

    store.insert(
        [
            answered(1, "search", 0.25, 1.0),
            answered(2, "search", 0.5, 0.25, at=NOON + 3600),  # more than its reference
            answered(3, "ads", None, None),  # nothing known
            answered(4, "support", 0.125, None),  # no reference route
            answered(5, "support", None, None, at=NOON - 86400),  # the day before: nothing known
        ]
    )
    view = spend_view(store, Filters.parse("2026-03-09", "2026-03-11", None, "team", DAY))
    energy = {row["team"]: row["energy"] for row in view.rows}
    assert energy["search"] == {"energy_wh": 0.75, "reference_energy_wh": 1.25, "saved_energy_wh": 0.5}
    assert energy["ads"] == {"energy_wh": None, "reference_energy_wh": None, "saved_energy_wh": None}
    assert energy["support"] == {"energy_wh": 0.125, "reference_energy_wh": None, "saved_energy_wh": None}
    # Saved only where both are known: support's request, with no reference, saved nothing knowable.
    assert view.energy == {"energy_wh": 0.875, "reference_energy_wh": 1.25, "saved_energy_wh": 0.5}
    assert view.energy_by_day == {"ads": [None, None], "search": [None, 0.75], "support": [None, 0.125]}
    exported = {row["team"]: row for row in csv.DictReader(io.StringIO(as_csv(view)))}
    assert exported["search"]["estimated_energy_wh"] == "0.75"
    assert exported["search"]["estimated_saved_energy_wh"] == "0.5"
    assert exported["ads"]["estimated_energy_wh"] == exported["ads"]["estimated_saved_energy_wh"] == ""
    assert exported["support"]["estimated_reference_energy_wh"] == ""
    # A period with no traffic at all knows no energy either.
    empty = spend_view(store, Filters.parse("2026-01-01", "2026-01-02", None, "team", DAY))
    assert empty.energy == {"energy_wh": None, "reference_energy_wh": None, "saved_energy_wh": None}


@pytest.mark.parametrize(
    ("wh", "text"),
    [
        (0.0301234, "0.0301 Wh"),
        (0.000004, "0.000004 Wh"),
        (1.0, "1 Wh"),
        (12.34, "12.3 Wh"),
        (999.96, "1 kWh"),
        (4560.0, "4.56 kWh"),
        (1_234_567.0, "1.23 MWh"),
        (-0.5, "-0.5 Wh"),
        (0.0, "0 Wh"),
    ],
)
def test_energy_reads_in_wh_kwh_or_mwh_to_three_digits(wh: float, text: str) -> None:
    assert energy_text(wh) == text
