"""The OpenAPI description served at /openapi.json: FastAPI's routes, the request bodies of the routes
that read their own body, and `POST /v1/chat/completions`, the hot path that FastAPI never sees.

Clients and fuzzers (tests/api/test_fuzz.py) read it; it describes what is validated, nothing more."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.inbound.chat_completions import CHAT_COMPLETION_REQUEST

REF = "#/components/schemas/{model}"
# A chat request, as `POST /v1/chat/completions` and `POST /v1/route/explain` read it.
CHAT_BODY: dict[str, Any] = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": REF.format(model="ChatCompletionRequest")}}},
}
# A routing policy's YAML text, as `PUT /admin/policies/{name}` reads it.
POLICY_BODY: dict[str, Any] = {
    "required": True,
    "content": {"application/yaml": {"schema": {"type": "string"}}},
}
_ERROR = {"description": "An error, in OpenAI's format: {error: {message, type, param, code}}"}


def _chat_completions() -> dict[str, Any]:
    return {
        "post": {
            "summary": "Create a chat completion (OpenAI-compatible; `stream: true` answers with events)",
            "operationId": "create_chat_completion",
            "parameters": [
                {"name": "authorization", "in": "header", "required": False, "schema": {"type": "string"}}
            ],
            "requestBody": CHAT_BODY,
            "responses": {
                "200": {"description": "The completion, or its event stream"},
                "400": _ERROR,
                "401": _ERROR,
                "429": _ERROR,
                "502": _ERROR,
                "503": _ERROR,
                "504": _ERROR,
            },
        }
    }


def describe(api: FastAPI) -> None:
    """Make `api.openapi()` (and /openapi.json) return the gateway's whole description, built once."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, routes=api.routes)
            request = CHAT_COMPLETION_REQUEST.json_schema(ref_template=REF)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request.pop("$defs", {}))
            components["ChatCompletionRequest"] = request
            schema["paths"] = {"/v1/chat/completions": _chat_completions(), **schema["paths"]}
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
