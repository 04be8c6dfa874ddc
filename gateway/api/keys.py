"""The admin API for virtual keys: create (the secret is shown once), list, revoke, rotate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.accounting.keys import (
    NAME_MAX_LENGTH,
    TEAM_PATTERN,
    InvalidKeyField,
    KeyNotFound,
    KeyStore,
    Role,
)
from gateway.api.access import ADMIN_ONLY
from gateway.errors import InvalidRequest, NotFound
from gateway.runtime import Runtime

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


def _keys(request: Request) -> tuple[Runtime, KeyStore]:
    """The runtime and its key store (the router lets admins only this far)."""
    runtime: Runtime = request.app.state.runtime
    assert runtime.keys is not None
    return runtime, runtime.keys


@router.post("")
async def create_key(new: NewKey, request: Request) -> dict[str, Any]:
    runtime, store = _keys(request)
    try:
        key, secret = store.create(new.team, new.role, new.name)
    except InvalidKeyField as exc:
        raise InvalidRequest(str(exc), param=exc.field, code=f"invalid_{exc.field}") from exc
    _refresh(runtime)
    return {**key.public(), "key": secret}


@router.get("")
async def list_keys(request: Request, all: bool = False) -> dict[str, Any]:
    _, store = _keys(request)
    return {"keys": [key.public() for key in store.list(include_revoked=all)]}


@router.post("/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    runtime, store = _keys(request)
    try:
        key = store.revoke(key_id)
    except KeyNotFound as exc:
        raise NotFound(str(exc)) from exc
    _refresh(runtime)
    return key.public()


@router.post("/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request) -> dict[str, Any]:
    runtime, store = _keys(request)
    try:
        key, secret = store.rotate(key_id)
    except KeyNotFound as exc:
        raise NotFound(str(exc)) from exc
    _refresh(runtime)
    return {**key.public(), "key": secret}


def _refresh(runtime: Runtime) -> None:
    """This replica sees the change at once; others within their refresh interval."""
    assert runtime.auth is not None
    runtime.auth.refresh()
