"""A batch's input file, read: `parse_batch_input` turns the JSONL a client uploaded into the requests
of a batch (`BatchLine`), or raises `BatchInputError` naming the first line that is wrong and why.

What it accepts is OpenAI's request input format: one JSON object a line, each with a `custom_id`
(a non-empty string, unique in the file), `method` "POST", `url` equal to the batch's endpoint and a
`body` object; at most MAX_REQUESTS requests. Blank lines (and a UTF-8 byte order mark at the start)
are skipped; line numbers are the file's own, counted from 1, so an error points at the line an editor
shows. A pure function: no I/O, nothing kept between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# The endpoints a batch may target.
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
# OpenAI's limits on one input file.
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: `line_no` is its line in the input file (from 1), `body` the JSON object
    to send to `url`."""

    line_no: int
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


class BatchInputError(ValueError):
    """The input file cannot become a batch: `code` says why (OpenAI's batch error codes), `line` where
    (None: the file as a whole), `param` which field (None: the line as a whole)."""

    def __init__(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line
        self.param = param

    def as_batch_error(self) -> dict[str, Any]:
        """The error as an OpenAI batch object's `errors.data` item."""
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


def parse_batch_input(content: bytes, endpoint: str) -> list[BatchLine]:
    """The requests of a batch for `endpoint`, in the file's order; BatchInputError for the first
    problem found (see the module)."""
    if endpoint not in ENDPOINTS:
        raise BatchInputError(
            "invalid_endpoint",
            f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}",
            param="endpoint",
        )
    if len(content) > MAX_FILE_BYTES:
        raise BatchInputError(
            "file_too_large", f"the input file has {len(content)} bytes; at most {MAX_FILE_BYTES} (200 MB)"
        )
    content = content.removeprefix(b"\xef\xbb\xbf")
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(content.split(b"\n")):
        if not raw.strip():
            continue
        line_no = index + 1
        if len(lines) == MAX_REQUESTS:
            raise BatchInputError(
                "too_many_requests",
                f"line {line_no}: the input file has more than {MAX_REQUESTS} requests",
                line_no,
            )
        line = _parse_line(raw, line_no, endpoint)
        earlier = seen.setdefault(line.custom_id, line_no)
        if earlier != line_no:
            raise BatchInputError(
                "duplicate_custom_id",
                f"line {line_no}: custom_id {line.custom_id!r} is already used on line {earlier}",
                line_no,
                "custom_id",
            )
        lines.append(line)
    if not lines:
        raise BatchInputError("empty_file", "the input file has no requests")
    return lines


def _parse_line(raw: bytes, line_no: int, endpoint: str) -> BatchLine:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BatchInputError(
            "invalid_json_line", f"line {line_no}: not valid JSON ({exc})", line_no
        ) from None
    if not isinstance(request, dict):
        raise BatchInputError("invalid_json_line", f"line {line_no}: not a JSON object", line_no)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise BatchInputError(
            "missing_custom_id", f"line {line_no}: custom_id must be a non-empty string", line_no, "custom_id"
        )
    method = request.get("method")
    if method != "POST":
        raise BatchInputError(
            "invalid_method", f"line {line_no}: method must be 'POST', not {method!r}", line_no, "method"
        )
    url = request.get("url")
    if url != endpoint:
        raise BatchInputError(
            "invalid_url",
            f"line {line_no}: url {url!r} is not the batch's endpoint {endpoint!r}",
            line_no,
            "url",
        )
    body = request.get("body")
    if not isinstance(body, dict):
        raise BatchInputError("invalid_body", f"line {line_no}: body must be a JSON object", line_no, "body")
    return BatchLine(line_no, custom_id, method, url, body)
