"""`GET /spend`: spend grouped by team, route, model, rule or day, with what routing saved, as JSON
or CSV. For keys with role finance or admin; a client key gets 403."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from gateway.api.access import ServicesDep
from gateway.errors import InvalidRequest, UpstreamUnavailable
from gateway.identity.auth import require_role
from gateway.ledger.spend_report import BadReportQuery, as_csv, parse_groups, parse_moment
from gateway.ledger.store import LedgerUnavailable

router = APIRouter()
Authorization = Annotated[str | None, Header()]


@router.get("/spend", response_model=None)
async def spend(
    request: Request,
    services: ServicesDep,
    authorization: Authorization = None,
    group_by: Annotated[str, Query(description="comma-separated: team, route, model, rule, day, …")] = "team",
    since: Annotated[str | None, Query(description="a day (2026-11-01), ISO time or unix seconds")] = None,
    until: Annotated[str | None, Query(description="exclusive; same forms as since")] = None,
    team: str | None = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> dict[str, Any] | Response:
    require_role(services.auth.principal(authorization), "finance", "admin")
    ledger = services.ledger
    assert ledger is not None
    try:
        groups = parse_groups(group_by)
        start, end = parse_moment(since, "since"), parse_moment(until, "until")
    except BadReportQuery as exc:
        raise InvalidRequest(str(exc), param=exc.param) from exc
    try:
        await ledger.drain()  # what this replica answered so far counts too
        rows = await asyncio.to_thread(ledger.report, groups, start, end, team)
    except LedgerUnavailable as exc:
        raise UpstreamUnavailable(f"The spend ledger's database is unavailable: {exc}") from exc
    if format == "csv":
        return Response(as_csv(groups, rows), media_type="text/csv")
    return {"group_by": groups, "since": start, "until": end, "rows": rows}
