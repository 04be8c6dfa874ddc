"""The finance dashboard in a real browser: Debian's headless Chromium driven by Playwright signs in with
a finance key, reads totals that must equal the ledger's, sees the charts drawn, filters to one team,
downloads the CSV and finds the table in it, reads the estimated energy used and saved beside the cost,
with no script or policy error in the console. Screenshots at desktop and phone width land in
artifacts/screenshots/ (look at them: people read these pages)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gateway.dashboard.views import energy_text
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.api.test_dashboard import ADMIN_KEY, bearer, create_key, energy_by_team, energy_spec, spec
from tests.conftest import RunningGateway, ledger_rows

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
Gateway = Callable[..., RunningGateway]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make browser)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def served(upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway) -> tuple[RunningGateway, str]:
    gw = gateway(spec(upstreams(Behaviour(content="one two three four five six"))), admin_keys=[ADMIN_KEY])
    for team, questions in (("search", 3), ("support", 2), ("ads", 1)):
        key, _ = create_key(gw, team, "client")
        client = gw.client(api_key=key)
        for n in range(questions):
            client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"question {n}"}]
            )
    finance, _ = create_key(gw, "finance", "finance")
    return gw, finance


def ledger_totals(gw: RunningGateway, key: str, **params: str) -> dict[str, float]:
    rows = httpx.get(f"{gw.url}/spend", params={"group_by": "", **params}, headers=bearer(key)).json()["rows"]
    return dict(rows[0])


def signed_in_page(browser: Browser, gw: RunningGateway, key: str, **options: Any) -> tuple[Page, list[str]]:
    """A page signed in through the form with `key`, and the console errors it will collect."""
    page = browser.new_context(**options).new_page()
    problems = problems_of(page)
    page.goto(f"{gw.url}/dashboard/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    return page, problems


def problems_of(page: Page) -> list[str]:
    found: list[str] = []
    page.on("console", lambda message: found.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: found.append(str(error)))
    return found


def test_finance_signs_in_reads_the_ledgers_totals_filters_and_exports(
    served: tuple[RunningGateway, str], browser: Browser
) -> None:
    gw, finance = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    problems = problems_of(page)

    page.goto(f"{gw.url}/dashboard")
    assert page.url.endswith("/dashboard/login")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-sign-in.png"))
    page.fill("#key", finance)
    page.click("button[type=submit]")
    page.wait_for_url(f"{gw.url}/dashboard")
    assert finance not in page.url

    ledger = ledger_totals(gw, finance)
    assert page.text_content("#total-spend") == f"${ledger['cost_usd']:,.2f}"
    assert page.text_content("#total-saved") == f"${ledger['saved_usd']:,.2f}"
    assert page.text_content("#total-requests") == "6"
    # plotly drew one stacked bar trace per team in each chart.
    page.wait_for_selector("#spend-chart .main-svg")
    assert page.locator("#spend-chart g.trace.bars").count() == 3
    assert page.locator("#saved-chart g.trace.bars").count() == 3
    page.screenshot(path=str(SCREENSHOTS / "dashboard-1280x800.png"), full_page=True)

    # Filter to one team: the totals follow.
    page.select_option("select[name=team]", "support")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**team=support**")
    assert page.text_content("#total-requests") == "2"
    assert (
        page.text_content("#total-spend") == f"${ledger_totals(gw, finance, team='support')['cost_usd']:,.2f}"
    )

    # Group by route and export: the CSV is the table on the page.
    page.select_option("select[name=group]", "route")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**group=route**")
    with page.expect_download() as download:
        page.click("text=Export CSV")
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    table = [cells.split("\t") for cells in page.locator("#by-group tbody tr").all_inner_texts()]
    assert [(row["route"], row["requests"]) for row in exported] == [(cells[0], cells[1]) for cells in table]
    assert exported[0]["route"] == "local"

    # A phone-width screen: nothing wider than the page.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{gw.url}/dashboard")
    page.wait_for_selector("#spend-chart .main-svg")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-phone.png"), full_page=True)
    # Wide tables scroll inside their card; nothing else may be wider than the screen.
    wider = page.evaluate(
        """[...document.querySelectorAll('body *')]
            .filter(e => !e.closest('.scroll'))
            .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
            .map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 5)"""
    )
    assert wider == []
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert problems == []
    page.context.close()


def test_a_client_key_is_turned_away_at_the_sign_in(
    served: tuple[RunningGateway, str], browser: Browser
) -> None:
    gw, _ = served
    client_key, _ = create_key(gw, "search", "client")
    page, _ = signed_in_page(browser, gw, client_key)
    assert "needs role finance or admin" in page.text_content("[role=alert]")
    page.goto(f"{gw.url}/dashboard")
    assert page.url.endswith("/dashboard/login")
    assert page.context.cookies() == []
    page.context.close()


def test_an_admin_validates_the_live_policy_and_explains_a_request(
    served: tuple[RunningGateway, str], browser: Browser
) -> None:
    gw, _ = served
    admin_key, _ = create_key(gw, "platform", "admin")
    page, problems = signed_in_page(browser, gw, admin_key, viewport={"width": 1280, "height": 800})
    page.click("nav >> text=Policies")
    page.wait_for_url(f"{gw.url}/dashboard/policies")
    assert page.text_content("#live-version") == "v1"
    page.click("button[value=validate]")
    assert "Same meaning as the live version" in page.text_content("#check")
    page.click("button[value=explain]")
    assert '"route": "frontier"' in page.text_content("#explained")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-policies.png"), full_page=True)
    assert problems == []
    page.context.close()


def watt_hours(text: str) -> float:
    """A figure as the page shows it ("0.0301 Wh", "4.56 kWh") back in watt-hours."""
    number, unit = text.split()
    return float(number.replace(",", "")) * {"Wh": 1.0, "kWh": 1e3, "MWh": 1e6}[unit]


def test_finance_reads_the_estimated_energy_used_and_saved_beside_the_cost(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway, bg: BackgroundLoop, browser: Browser
) -> None:
    gw = gateway(
        energy_spec(upstreams(Behaviour(content="one two three four five six"))), admin_keys=[ADMIN_KEY]
    )
    for team, questions in (("search", 2), ("support", 3)):
        key, _ = create_key(gw, team, "client")
        client = gw.client(api_key=key)
        for n in range(questions):
            client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"question {n}"}]
            )
    ledger = energy_by_team(ledger_rows(gw, bg))
    used, saved = (sum(figures) for figures in zip(*ledger.values(), strict=True))
    assert used > 0 and saved > 0  # support's answers came from the local route, at a tenth of the energy
    finance, _ = create_key(gw, "finance", "finance")
    page, problems = signed_in_page(browser, gw, finance, viewport={"width": 1280, "height": 800})
    page.wait_for_url(f"{gw.url}/dashboard")

    # The totals as people read them, and the exact sums behind them, are the ledger's.
    assert page.text_content("#total-energy") == energy_text(used)
    assert watt_hours(page.inner_text("#total-energy")) == pytest.approx(used, rel=5e-3)  # three digits
    assert watt_hours(page.inner_text("#total-energy-saved")) == pytest.approx(saved, rel=5e-3)
    assert float(page.get_attribute("#total-energy", "data-wh") or "nan") == pytest.approx(used, rel=1e-9)
    assert page.text_content("#total-energy-saved") == energy_text(saved)
    assert float(page.get_attribute("#total-energy-saved", "data-wh") or "nan") == pytest.approx(
        saved, rel=1e-9
    )
    assert "Energy used (estimated)" in page.inner_text(".cards")
    assert "Energy is an estimate, not a measurement" in page.inner_text("#energy-note")
    # Per team in the table, beside its spend.
    shown = {
        row.locator("td").first.inner_text(): (
            row.locator("td.energy").inner_text(),
            row.locator("td.energy-saved").inner_text(),
        )
        for row in page.locator("#by-group tbody tr").all()
    }
    assert shown == {
        team: (energy_text(team_used), energy_text(team_saved))
        for team, (team_used, team_saved) in ledger.items()
    }
    # plotly drew the energy per day, one bar trace per team.
    page.wait_for_selector("#energy-chart .main-svg")
    assert page.locator("#energy-chart g.trace.bars").count() == 2
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-energy.png"), full_page=True)
    assert problems == []
    page.context.close()
