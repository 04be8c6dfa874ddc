"""The admin API for policies: apply a new version, list versions with their diffs, roll back.

Changing routing takes a key with role admin; a gateway with no keys at all is open on loopback only,
and so is this API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.api.access import ADMIN_ONLY, Admin, ServicesDep
from gateway.api.openapi import POLICY_BODY
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.identity.auth import Principal
from gateway.policy.compile import PolicyError
from gateway.policy.store import PolicyNotWritable, PolicyStore
from gateway.services import Services

router = APIRouter(prefix="/admin/policies", dependencies=ADMIN_ONLY)


def _author(principal: Principal) -> str:
    """Who applied a version, as the history records it."""
    return f"key {principal.key_id}" if principal.key_id else "loopback (open gateway)"


def _store(services: Services, name: str) -> PolicyStore:
    store = services.policies
    assert store is not None
    if name != store.name:
        raise NotFound(f"No live policy named '{name}' (the live policy is '{store.name}').")
    return store


@router.get("")
async def list_policies(request: Request, services: ServicesDep) -> dict[str, Any]:
    store = services.policies
    assert store is not None
    return {
        "live": {
            "name": store.name,
            "version": store.version,
            "rules": len(store.current.rules),
            "last_error": store.last_error,
        }
    }


@router.put("/{name}", openapi_extra={"requestBody": POLICY_BODY})
async def apply_policy(
    name: str, request: Request, services: ServicesDep, principal: Admin
) -> dict[str, Any]:
    store = _store(services, name)
    try:
        text = (await request.body()).decode()
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The policy must be UTF-8 text (YAML).") from exc
    return {"name": name, "version": await _apply(store, text, _author(principal))}


@router.get("/{name}/versions")
async def list_versions(name: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    store = _store(services, name)
    return {
        "name": name,
        "live_version": store.version,
        "versions": [
            {
                "version": v.version,
                "applied_at": v.applied_at,
                "author": v.author,
                "digest": v.digest,
                "diff": v.diff,
            }
            for v in services.history.versions(name)
        ],
    }


@router.post("/{name}/rollback/{version}")
async def roll_back(
    name: str, version: int, request: Request, services: ServicesDep, principal: Admin
) -> dict[str, Any]:
    store = _store(services, name)
    text = services.history.source_of(name, version)
    if text is None:
        raise NotFound(f"Policy '{name}' has no version {version}.")
    applied = await _apply(store, text, f"{_author(principal)} (rollback to v{version})")
    return {"name": name, "version": applied, "rolled_back_to": version}


async def _apply(store: PolicyStore, text: str, author: str) -> int:
    try:
        return await store.apply(text, author, write_file=True)
    except PolicyNotWritable as exc:
        raise Conflict(
            "The policy was not applied.\n" + "\n".join(exc.problems), code="policy_read_only"
        ) from exc
    except PolicyError as exc:
        error = InvalidRequest(
            "The policy was not applied; the running one stays.\n" + "\n".join(exc.problems)
        )
        error.code = "invalid_policy"
        raise error from exc
