"""A request body as a JSON object: the first check every inbound API makes."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest


def json_object(raw: bytes) -> dict[str, Any]:
    """The parsed body; InvalidRequest when it is not JSON or not an object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body
