"""/dashboard/policies as an admin uses it: the live version and its source, validating an edit (golden cases
and the diff, nothing changed), applying it, rolling back, explaining a sample request; finance sessions
and cross-site posts are refused and change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.api.test_dashboard import ADMIN_KEY, bearer, create_key, sign_in, spec
from tests.conftest import RunningGateway

Gateway = Callable[..., RunningGateway]
GOLDEN = {
    "name": "support stays local",
    "request": {"body": {"messages": [{"role": "user", "content": "hi"}]}, "team": "support"},
    "expect": {"rule": "support-local", "route": "local"},
}


def with_golden(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {**spec(upstream), "tests": [GOLDEN]}


@pytest.fixture
def admin(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> tuple[RunningGateway, httpx.Client]:
    gw = gateway(with_golden(upstreams(Behaviour(content="ok"))), admin_keys=[ADMIN_KEY])
    return gw, sign_in(gw, create_key(gw, "platform", "admin")[0])


def live(gw: RunningGateway) -> dict[str, Any]:
    listed: dict[str, Any] = httpx.get(f"{gw.url}/admin/policies", headers=bearer(ADMIN_KEY)).json()["live"]
    return listed


def source_of(page: str) -> str:
    start = page.index('id="policy-text"')
    text = page[page.index(">", start) + 1 : page.index("</textarea>", start)]
    return (
        text.replace("&#34;", '"')
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
    )


def test_an_admin_validates_applies_and_rolls_back_an_edit(
    admin: tuple[RunningGateway, httpx.Client],
) -> None:
    gw, browser = admin
    page = browser.get("/dashboard/policies")
    assert page.status_code == 200 and 'id="live-version">v1<' in page.text
    original = source_of(page.text)
    policy = yaml.safe_load(original)
    assert policy["default_route"] == "frontier"

    # A broken edit: the golden case fails; nothing changes.
    broken = dict(policy, rules=[])
    checked = browser.post("/dashboard/policies", data={"action": "validate", "text": yaml.safe_dump(broken)})
    assert (
        checked.status_code == 200 and "Not valid" in checked.text and "support stays local" in checked.text
    )
    # A good edit: valid, the golden case passes, the diff is shown; still nothing changes.
    edited = dict(policy, default_route="local")
    checked = browser.post("/dashboard/policies", data={"action": "validate", "text": yaml.safe_dump(edited)})
    assert "Valid: 1 rules; 1 golden cases pass: support stays local" in checked.text
    assert "default_route" in checked.text
    assert live(gw)["version"] == 1

    applied = browser.post(
        "/dashboard/policies", data={"action": "apply", "text": yaml.safe_dump(edited)}, follow_redirects=True
    )
    assert applied.status_code == 200 and "Version v2 applied" in applied.text  # followed the redirect
    assert live(gw)["version"] == 2
    refused = browser.post("/dashboard/policies", data={"action": "apply", "text": yaml.safe_dump(broken)})
    assert refused.status_code == 400 and "Not applied; the live version stays" in refused.text
    assert live(gw)["version"] == 2

    rolled = browser.post(
        "/dashboard/policies", data={"action": "rollback", "version": "1"}, follow_redirects=True
    )
    assert "Version v3 applied" in rolled.text
    assert yaml.safe_load(source_of(rolled.text))["default_route"] == "frontier"
    history = rolled.text[rolled.text.index('id="versions"') :]
    assert "v3" in history and "Roll back to v2" in history and "Roll back to v1" in history


def test_explain_shows_the_live_decision_for_a_sample(admin: tuple[RunningGateway, httpx.Client]) -> None:
    _, browser = admin
    sample = '{"messages": [{"role": "user", "content": "hello"}]}'
    explained = browser.post("/dashboard/policies", data={"action": "explain", "sample": sample})
    assert explained.status_code == 200
    assert "&#34;route&#34;: &#34;frontier&#34;" in explained.text
    bad = browser.post("/dashboard/policies", data={"action": "explain", "sample": "{not json"})
    assert 'id="explained"' in bad.text and "error" in bad.text


def test_finance_sessions_and_cross_site_posts_cannot_touch_policies(
    admin: tuple[RunningGateway, httpx.Client],
) -> None:
    gw, browser = admin
    finance = sign_in(gw, create_key(gw, "finance", "finance")[0])
    assert finance.get("/dashboard/policies").status_code == 403
    text = yaml.safe_dump({"routes": {}})
    assert finance.post("/dashboard/policies", data={"action": "apply", "text": text}).status_code == 403
    assert "Policies" not in finance.get("/dashboard").text.split("<main>")[0]  # no link for finance
    cross = browser.post(
        "/dashboard/policies",
        data={"action": "rollback", "version": "1"},
        headers={"origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    fetched = browser.post(
        "/dashboard/policies",
        data={"action": "rollback", "version": "1"},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert fetched.status_code == 403
    assert live(gw)["version"] == 1
    assert httpx.get(f"{gw.url}/dashboard/policies").status_code == 303  # no session: sign in first
