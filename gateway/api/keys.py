"""The admin API for virtual keys: create (the secret is shown once), list, revoke, rotate.

The database calls run on a worker thread (a hung database answers 503 `KeysUnavailable` within the
store's timeouts and holds nothing else up). A change takes effect on this replica before the answer
leaves, and, with Redis, on every other replica within milliseconds (`identity/key_changes.py`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.access import ADMIN_ONLY, ServicesDep
from gateway.errors import InvalidRequest, NotFound
from gateway.identity.keys import (
    NAME_MAX_LENGTH,
    TEAM_PATTERN,
    InvalidKeyField,
    KeyChange,
    KeyNotFound,
    Role,
)
from gateway.services import Services

router = APIRouter(prefix="/admin/keys", dependencies=ADMIN_ONLY)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked by keys.check_new_key (one check for the API and the CLI); the schema only describes it.
    team: Annotated[str, Field(json_schema_extra={"pattern": TEAM_PATTERN})]
    role: Role = "client"
    name: Annotated[
        str,
        Field(json_schema_extra={"maxLength": NAME_MAX_LENGTH}, description="One line of printable text."),
    ] = ""


@router.post("")
async def create_key(new: NewKey, request: Request, services: ServicesDep) -> dict[str, Any]:
    store = services.keys
    try:
        key, secret = await asyncio.to_thread(store.create, new.team, new.role, new.name)
    except InvalidKeyField as exc:
        raise InvalidRequest(str(exc), param=exc.field, code=f"invalid_{exc.field}") from exc
    await _changed(services, KeyChange(key.id, "create"))
    return {**key.public(), "key": secret}


@router.get("")
async def list_keys(request: Request, services: ServicesDep, all: bool = False) -> dict[str, Any]:
    store = services.keys
    keys = await asyncio.to_thread(store.list, include_revoked=all)
    return {"keys": [key.public() for key in keys]}


@router.post("/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    store = services.keys
    try:
        key = await asyncio.to_thread(store.revoke, key_id)
    except KeyNotFound as exc:
        raise NotFound(str(exc)) from exc
    await _changed(services, KeyChange(key.id, "revoke"))
    return key.public()


@router.post("/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    store = services.keys
    try:
        key, secret = await asyncio.to_thread(store.rotate, key_id)
    except KeyNotFound as exc:
        raise NotFound(str(exc)) from exc
    await _changed(services, KeyChange(key.id, "rotate"))
    return {**key.public(), "key": secret}


async def _changed(services: Services, change: KeyChange) -> None:
    """This replica stops accepting an old secret at once and knows the new keys before answering; other
    replicas hear of it through Redis (else within their refresh interval)."""
    if change.stops_a_secret:
        services.auth.forget_key(change.key_id)
    await services.key_changes.publish(change)
    await services.auth.reload()
