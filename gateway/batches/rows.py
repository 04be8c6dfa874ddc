"""What the batch store hands out and takes in: a file (`FileRow`), a batch (`BatchRow`), a line a worker
claimed (`ClaimedLine`), the statuses and states they move through, how their ids are made, and the
checks a new batch's arguments must pass. Plain frozen values: nothing here touches a database.

A batch's status: `in_progress` once it and all its lines are stored (one transaction, so
`validating` is never stored), or `failed` when its input file was refused; then `completed` (every
line done or failed), `cancelling` → `cancelled` (asked to stop; lines running then may still finish),
or `expired` (its 24 h passed first). `finalizing` is the instant its output files are written, inside
the transaction that finishes it; its timestamp is kept, the status never stays.

A line's state: `pending` → `running` (claimed by a worker, for a lease) → `done` or `failed`; or
`cancelled` (its batch was cancelled or expired before it finished). A running line whose lease ran
out (its worker died) is claimed again; `attempts` counts the claims.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

# The statuses a batch can have, and the states a line can.
BATCH_STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
    "expired",
)
LINE_STATES = ("pending", "running", "done", "failed", "cancelled")
# What a worker reports a line as: `done` (an answer, whatever its status code) or `failed`.
FinishedState: TypeAlias = Literal["done", "failed"]
# A file's purposes: uploaded inputs, and the outputs and errors of finished batches.
FILE_PURPOSES = ("batch", "batch_output")
# The completion windows a batch may ask for, in seconds.
COMPLETION_WINDOWS = {"24h": 24 * 3600}
# OpenAI's limits on a batch's metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# (batch id, line number): a line of a batch.
LineKey: TypeAlias = tuple[str, int]


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def new_request_id() -> str:
    """The id of one line's output object."""
    return f"batch_req_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class FileRow:
    """A stored file, without its content (`file_content` reads that). Times are unix seconds."""

    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a batch's finished lines used, summed."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def values(self) -> tuple[int, int, int, int, int]:
        return (
            self.input_tokens,
            self.cached_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.total_tokens,
        )


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A stored batch. Times are unix seconds (None: not happened). `errors` are the input file's
    validation errors (OpenAI's `errors.data` items; None: none); `cost_usd` the sum of its finished
    lines' costs so far."""

    id: str
    tenant: str
    endpoint: str
    model: str | None
    input_file_id: str
    completion_window: str
    status: str
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] | None
    created_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    expires_at: int | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    cost_usd: float
    usage: Usage
    # Who created it: whose budgets and rate limits its lines count against.
    team: str | None = None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedLine:
    """A line a worker holds until `lease_until` (unix seconds): the request to run for `tenant`."""

    batch_id: str
    line_no: int
    tenant: str
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]
    attempts: int
    lease_until: float
    # The batch's creator (None for a batch made before the gateway kept it: its tenant is its team).
    team: str | None = None
    key_id: str | None = None

    @property
    def key(self) -> LineKey:
        return (self.batch_id, self.line_no)


def window_seconds(completion_window: str) -> int:
    """How long a batch asking for `completion_window` may run; ValueError for one not supported."""
    try:
        return COMPLETION_WINDOWS[completion_window]
    except KeyError:
        raise ValueError(
            f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}, not {completion_window!r}"
        ) from None


def check_metadata(metadata: dict[str, str] | None) -> None:
    """ValueError for metadata OpenAI would refuse: more than 16 pairs, a key over 64 characters, a
    value over 512, or anything but strings."""
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata may have at most {MAX_METADATA_PAIRS} pairs, not {len(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("metadata keys and values must be strings")
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata key {key[:20]!r}… is longer than {MAX_METADATA_KEY} characters")
        if len(value) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata value of {key!r} is longer than {MAX_METADATA_VALUE} characters")
