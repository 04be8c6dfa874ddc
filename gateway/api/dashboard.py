"""`/dashboard`: the finance dashboard, served by the gateway. A finance or admin key signs in once (the key
is posted in a form, never put in a URL) and gets a session cookie; client keys are refused. Pages are
rendered on the server from the hourly rollup; charts are drawn by plotly.js, served from the installed
`plotly` package (nothing is loaded from the internet)."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter, Cookie, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from gateway.api.access import ServicesDep
from gateway.dashboard.session import COOKIE
from gateway.dashboard.views import BadFilter, Filters, SpendView, as_csv, energy_text, spend_view
from gateway.errors import AuthenticationFailed
from gateway.identity.auth import Principal
from gateway.ledger.store import LedgerUnavailable
from gateway.services import Services

if TYPE_CHECKING:
    from jinja2 import Environment, Template

router = APIRouter(prefix="/dashboard")


class LazyTemplates:
    """The pages' Jinja2 templates, loaded with the first page: a gateway whose dashboard nobody opens
    never imports jinja2 (start-up time and memory)."""

    def __init__(self) -> None:
        self._environment: Environment | None = None

    def get_template(self, name: str) -> Template:
        if self._environment is None:
            from jinja2 import Environment, PackageLoader, select_autoescape

            environment = Environment(
                loader=PackageLoader("gateway.dashboard", "templates"), autoescape=select_autoescape()
            )
            environment.filters["datetime"] = lambda timestamp: _utc(float(timestamp))
            environment.filters["wh"] = energy_text
            self._environment = environment
        return self._environment.get_template(name)


TEMPLATES = LazyTemplates()
STATIC = Path(__file__).resolve().parents[1] / "dashboard" / "static"
ROLES = ("finance", "admin")
# plotly.js as the `plotly` package ships it (found without importing the Python library).
_PLOTLY = importlib.util.find_spec("plotly")
PLOTLY_JS = (
    Path(_PLOTLY.origin).parent / "package_data" / "plotly.min.js" if _PLOTLY and _PLOTLY.origin else None
)
# Pages may run only the gateway's own scripts; plotly sets inline styles on what it draws.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
SessionCookie = Annotated[str | None, Cookie(alias=COOKIE)]


def page(
    template: str, status: int = 200, principal: Principal | None = None, **context: Any
) -> HTMLResponse:
    """A page; with the signed-in principal, its header names them and links what they may open."""
    if principal is not None:
        who = " · ".join(part for part in (principal.team, principal.role) if part)
        context |= {"signed": True, "who": who, "is_admin": principal.role == "admin"}
    html = TEMPLATES.get_template(template).render(principal=principal, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def signed_in(services: Services, cookie: str | None) -> Principal | None:
    """The session's principal when it may read the dashboard; an open gateway needs no session."""
    if services.auth.open:
        return services.auth.principal(None)
    key_id = services.sessions.key_of(cookie)
    principal = services.auth.principal_of_key(key_id) if key_id else None
    return principal if principal is not None and principal.role in ROLES else None


def to_sign_in() -> RedirectResponse:
    return RedirectResponse("/dashboard/login", status_code=303, headers=SECURITY_HEADERS)


@router.get("/login", response_model=None)
async def sign_in_page(request: Request, services: ServicesDep, session: SessionCookie = None) -> Response:
    if signed_in(services, session) is not None:
        return RedirectResponse("/dashboard", status_code=303)
    return page("login.html")


@router.post("/login", response_model=None)
async def sign_in(request: Request, services: ServicesDep) -> Response:
    form = parse_qs((await request.body())[:8192].decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    try:
        principal = services.auth.principal(f"Bearer {key}") if key else None
    except AuthenticationFailed:
        principal = None
    if principal is None or principal.key_id is None:
        return page("login.html", status=401, error="That key is not valid.")
    if principal.role not in ROLES:
        return page(
            "login.html",
            status=403,
            error="This key may not read the dashboard: it needs role finance or admin.",
        )
    response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        services.sessions.issue(principal.key_id),
        max_age=services.sessions.max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/dashboard",
    )
    return response


@router.post("/logout", response_model=None)
async def sign_out() -> Response:
    response = to_sign_in()
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@dataclass(frozen=True, slots=True)
class ViewQuery:
    """A view's filters as the query string gives them (checked by `Filters.parse`)."""

    since: str | None = None
    until: str | None = None
    team: str | None = None
    group: str | None = None


Query = Annotated[ViewQuery, Depends()]


@router.get("", response_model=None)
async def spend_page(
    request: Request, services: ServicesDep, query: Query, session: SessionCookie = None
) -> Response:
    principal = signed_in(services, session)
    if principal is None:
        return to_sign_in()
    started = time.perf_counter()
    try:
        view = await _view(services, query)
    except BadFilter as error:
        return page("error.html", status=400, message=str(error))
    except LedgerUnavailable:
        return page("error.html", status=503, message="The ledger's database is unavailable; try again.")
    chart = {
        "days": view.days,
        "spend": view.spend_by_day,
        "saved": view.saved_by_day,
        "energy": view.energy_by_day,
        "group": view.filters.group,
    }
    return page(
        "spend.html",
        view=view,
        principal=principal,
        chart_json=_script_safe(orjson.dumps(chart).decode()),
        export=f"/dashboard/export.csv?{urlencode(view.filters.query())}",
        groups=("team", "route", "model", "rule", "deployment", "cache"),
        audits=_audits(services),
        routers=await asyncio.to_thread(_routers, services.settings.state_dir / "routers"),
        rendered_ms=(time.perf_counter() - started) * 1000,
    )


@router.get("/export.csv", response_model=None)
async def export(
    request: Request, services: ServicesDep, query: Query, session: SessionCookie = None
) -> Response:
    if signed_in(services, session) is None:
        return to_sign_in()
    try:
        view = await _view(services, query)
    except BadFilter as error:
        return page("error.html", status=400, message=str(error))
    name = f"spend-{view.filters.since}-{view.filters.until}-by-{view.filters.group}.csv"
    return Response(
        as_csv(view),
        media_type="text/csv",
        headers={**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{name}"'},
    )


@router.get("/static/{name}", response_model=None)
async def static(name: str) -> Response:
    """The dashboard's own files and plotly.js; only these names (an allow-list, never a path)."""
    if name == "plotly.min.js":
        path = PLOTLY_JS
    elif name in ("dashboard.js", "dashboard.css"):
        path = STATIC / name
    else:
        path = None
    if path is None or not path.is_file():
        return Response(status_code=404)
    return FileResponse(
        path, headers={"cache-control": "public, max-age=86400", "x-content-type-options": "nosniff"}
    )


async def _view(services: Services, query: ViewQuery) -> SpendView:
    ledger = services.ledger
    filters = Filters.parse(query.since, query.until, query.team, query.group, datetime.now(UTC).date())
    await ledger.drain()  # what this replica answered so far counts too
    budgets = services.policies.current.policy.budgets
    return await asyncio.to_thread(spend_view, ledger.store, filters, budgets)


def _audits(services: Services) -> list[dict[str, Any]]:
    """The semantic cache's live precision per route, as this replica's shadow checks found it."""
    rows = []
    for route, totals in sorted(services.audits.totals.items()):
        live = totals.live()
        rows.append({
            "route": route, "agree": totals.agree, "disagree": totals.disagree, "precision": totals.precision,
            "live": live.share if live.trials else None, "low": live.low, "high": live.high,
            "checks": live.trials,
        })  # fmt: skip
    return rows


def _routers(directory: Path) -> list[dict[str, Any]]:
    """Each team's latest retrained router (`gateway router retrain`, under the state directory) as its
    card says it did on held-out recorded traffic, with its curve drawn as an SVG polyline."""
    rows = []
    for team_dir in sorted(path for path in directory.glob("*") if path.is_dir()):
        versions = sorted(
            (int(path.stem[1:]), path) for path in team_dir.glob("v*.json") if path.stem[1:].isdigit()
        )
        if not versions:
            continue
        version, path = versions[-1]
        try:
            card = orjson.loads(path.read_bytes())
            held = card["held_out"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            continue
        curve = card.get("curve") or {}
        rows.append({
            "team": team_dir.name, "version": version, "model": card.get("model"), "held": held,
            "router_points": _polyline(curve.get(card.get("model")) or []),
            "random_points": _polyline(curve.get("random") or []),
        })  # fmt: skip
    return rows


def _polyline(points: list[list[float]]) -> str:
    """(share, quality) points as an SVG polyline in a 100 x 50 box, quality from 0.5 to 1 upwards."""
    return " ".join(
        f"{share * 100:.1f},{50 - (max(quality, 0.5) - 0.5) * 100:.1f}" for share, quality in points
    )


def _script_safe(text: str) -> str:
    """JSON to embed in a <script> element: a team named `</script>` must not end it."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
