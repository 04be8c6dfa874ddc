"""The admin API for the answer cache: drop one entry, a team's or a shared namespace's entries, or
everything (an entry is named by the `x-gateway-cache-key` header its answers carried); and the live
precision of semantic hits checked against fresh answers. Role admin."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from gateway.api.access import ADMIN_ONLY, ServicesDep
from gateway.errors import InvalidRequest

router = APIRouter(prefix="/admin/cache", dependencies=ADMIN_ONLY)


@router.delete("")
async def invalidate(
    request: Request,
    services: ServicesDep,
    team: str | None = None,
    namespace: str | None = None,
    key: str | None = None,
    all: bool = False,
) -> dict[str, Any]:
    cache = services.cache
    if cache is None:
        return {"dropped": 0}
    if team is not None and namespace is not None:
        raise InvalidRequest("Name a team or a shared namespace, not both.", param="namespace")
    scope = f"team:{team}" if team is not None else f"shared:{namespace}" if namespace is not None else None
    if scope is None and not all:
        raise InvalidRequest(
            "Name a team, a namespace, or say all=true to empty the whole cache.", param="all"
        )
    if key is not None and scope is None:
        raise InvalidRequest("An entry's key needs its team or namespace.", param="key")
    dropped = await cache.store.invalidate(scope, key)
    return {"dropped": dropped, "namespace": scope, "key": key}


@router.get("/audits")
async def audits(request: Request, services: ServicesDep) -> dict[str, Any]:
    """Semantic hits checked live (a rule's `verify_sample`), per route, since this replica started."""
    audit = services.audits
    return {
        "routes": {
            route: {
                "agree": totals.agree,
                "disagree": totals.disagree,
                "failed": totals.failed,
                "precision": totals.precision,
                # The live guard's view: the last checks' precision, its 95 % interval and their number.
                "live": asdict(totals.live()),
            }
            for route, totals in audit.totals.items()
        },
        "skipped": audit.skipped,
    }
