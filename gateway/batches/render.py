"""The JSON objects OpenAI's Batch API answers with, made from stored rows: a batch (`render_batch`:
`object: "batch"`, its timestamps, `request_counts`, `usage`, `errors` as a list object or null), a file
(`render_file`: `object: "file"`, `status: "processed"`), and the output line of a request that never
ran (`unfinished_output`: no response, an `error` with OpenAI's code, `batch_cancelled` or
`batch_expired`). Keys come in OpenAI's documented order. Pure functions."""

from __future__ import annotations

from typing import Any

from gateway.batches.rows import BatchRow, FileRow, new_request_id


def render_batch(row: BatchRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": None if row.errors is None else {"object": "list", "data": row.errors},
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": row.created_at,
        "in_progress_at": row.in_progress_at,
        "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at,
        "completed_at": row.completed_at,
        "failed_at": row.failed_at,
        "expired_at": row.expired_at,
        "cancelling_at": row.cancelling_at,
        "cancelled_at": row.cancelled_at,
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "usage": {
            "input_tokens": row.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": row.usage.cached_tokens},
            "output_tokens": row.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": row.usage.reasoning_tokens},
            "total_tokens": row.usage.total_tokens,
        },
        "metadata": row.metadata,
        # The gateway's own: what the lines finished so far cost (USD), while it runs and after.
        "gateway_cost_usd": row.cost_usd,
    }


def render_file(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


# Why a request never ran, by the status its batch ended in.
UNFINISHED = {
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request ran."),
    "expired": ("batch_expired", "The request could not be run before the completion window ended."),
}


def unfinished_output(custom_id: str, batch_status: str) -> dict[str, Any]:
    """The error file's line for a request of a batch that ended `batch_status` before it ran."""
    code, message = UNFINISHED[batch_status]
    return {
        "id": new_request_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def exhausted_output(custom_id: str, attempts: int) -> dict[str, Any]:
    """The error file's line for a request whose workers all died (or lost it) before it finished."""
    return {
        "id": new_request_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {
            "code": "server_error",
            "message": f"The request was started {attempts} times and never finished.",
        },
    }
