"""The tokens one finished line used, read from its output object's `response.body.usage`, whichever
endpoint answered: Chat Completions and Completions (`prompt_tokens`, `completion_tokens`, their
`_details`), Responses (`input_tokens`, `output_tokens`, theirs) and Embeddings (`prompt_tokens`,
`total_tokens`). A missing or malformed usage counts as nothing; a pure function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.batches.rows import Usage


def line_usage(output: Mapping[str, Any]) -> Usage:
    response = output.get("response")
    body = response.get("body") if isinstance(response, Mapping) else None
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return Usage()
    if "input_tokens" in usage or "output_tokens" in usage:
        input_name, output_name = "input_tokens", "output_tokens"
    else:
        input_name, output_name = "prompt_tokens", "completion_tokens"
    input_tokens = _count(usage, input_name)
    output_tokens = _count(usage, output_name)
    return Usage(
        input_tokens=input_tokens,
        cached_tokens=_count(usage.get(f"{input_name}_details"), "cached_tokens"),
        output_tokens=output_tokens,
        reasoning_tokens=_count(usage.get(f"{output_name}_details"), "reasoning_tokens"),
        total_tokens=_count(usage, "total_tokens") or input_tokens + output_tokens,
    )


def _count(mapping: object, name: str) -> int:
    value = mapping.get(name) if isinstance(mapping, Mapping) else None
    # bool is an int: not a count.
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
