"""The batch store's operations for lines sent on to an upstream's own Batch API (OpenAI's), written
once for both databases like `operations.py`: functions of an open transaction (`schema.Sql`).

A line's life here (`upstream_lines`): `queued` (its batch line's runner asked for it to be sent;
queued once, whoever asks again gets the same row) → `submitted` (a submission took it, in the
transaction that created the submission) → `answered` (the upstream's output, or an error, recorded in
the transaction that ended its submission). A submission (`upstream_submissions`): `creating` (its
lines are chosen; the upstream batch may or may not exist yet) → `submitted` (the upstream's batch id
is known) → `ended`. `lease_until` says when a replica may next take a submission in hand: a
`creating` one whose creator died is looked for upstream (by the id it carries in its metadata) and
created only if it is not there, so no line is ever sent to the upstream twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.batches.operations import dumps
from gateway.batches.schema import Sql

SubmissionState = Literal["creating", "submitted", "ended"]


@dataclass(frozen=True, slots=True)
class QueuedGroup:
    """Queued lines for one deployment and endpoint: how many, and since when the oldest waits."""

    deployment: str
    url: str
    count: int
    oldest: float


@dataclass(frozen=True, slots=True)
class Submission:
    id: str
    deployment: str
    url: str
    state: SubmissionState
    upstream_id: str | None


@dataclass(frozen=True, slots=True)
class LineResult:
    """A line's upstream answer: its HTTP status and body (JSON text); None while it waits."""

    state: str
    status: int | None
    response: str | None


def queue_line(sql: Sql, key: str, deployment: str, url: str, body: Mapping[str, Any], now: float) -> bool:
    """Queue the line unless it is here already (a line run again after a crash); whether it was new."""
    return (
        sql.run(
            "INSERT INTO upstream_lines (line_key, deployment, url, body, state, queued_at)"
            " VALUES (?, ?, ?, ?, 'queued', ?) ON CONFLICT (line_key) DO NOTHING",
            (key, deployment, url, dumps(body), now),
        )
        == 1
    )


def line_result(sql: Sql, key: str) -> LineResult | None:
    found = sql.rows("SELECT state, status, response FROM upstream_lines WHERE line_key = ?", (key,))
    if not found:
        return None
    state, status, response = found[0]
    return LineResult(state, None if status is None else int(status), response)


def forget_line(sql: Sql, key: str) -> None:
    """Drop an answered line (its answer was taken, or it failed and is to be queued afresh)."""
    sql.run("DELETE FROM upstream_lines WHERE line_key = ? AND state = 'answered'", (key,))


def queued_groups(sql: Sql) -> list[QueuedGroup]:
    found = sql.rows(
        "SELECT deployment, url, COUNT(*), MIN(queued_at) FROM upstream_lines WHERE state = 'queued'"
        " GROUP BY deployment, url ORDER BY MIN(queued_at)"
    )
    return [QueuedGroup(row[0], row[1], int(row[2]), float(row[3])) for row in found]


def open_submission(
    sql: Sql, submission_id: str, deployment: str, url: str, limit: int, now: float, lease_until: float
) -> list[tuple[str, str]]:
    """Put up to `limit` of the oldest queued lines for the deployment and endpoint into a new
    `creating` submission, held until `lease_until`; their (key, body JSON), none when none is queued.
    On PostgreSQL lines another replica is taking are skipped, never waited for."""
    skip_locked = " FOR UPDATE SKIP LOCKED" if sql.postgres else ""
    picked = sql.rows(
        "SELECT line_key, body FROM upstream_lines WHERE deployment = ? AND url = ? AND state = 'queued'"
        " ORDER BY queued_at, line_key LIMIT ?" + skip_locked,
        (deployment, url, limit),
    )
    if not picked:
        return []
    sql.run(
        "INSERT INTO upstream_submissions (id, deployment, url, state, lines, created_at, lease_until)"
        " VALUES (?, ?, ?, 'creating', ?, ?, ?)",
        (submission_id, deployment, url, len(picked), now, lease_until),
    )
    for key, _ in picked:
        sql.run(
            "UPDATE upstream_lines SET state = 'submitted', submission = ? WHERE line_key = ?",
            (submission_id, key),
        )
    return [(str(key), str(body)) for key, body in picked]


def take_due_submissions(sql: Sql, now: float, lease_until: float, limit: int) -> list[Submission]:
    """Submissions not ended whose time to be looked at has come, each held until `lease_until`."""
    skip_locked = " FOR UPDATE SKIP LOCKED" if sql.postgres else ""
    found = sql.rows(
        "SELECT id, deployment, url, state, upstream_id FROM upstream_submissions"
        " WHERE state <> 'ended' AND lease_until <= ? ORDER BY lease_until LIMIT ?" + skip_locked,
        (now, limit),
    )
    for row in found:
        sql.run("UPDATE upstream_submissions SET lease_until = ? WHERE id = ?", (lease_until, row[0]))
    return [Submission(row[0], row[1], row[2], row[3], row[4]) for row in found]


def submission_lines(sql: Sql, submission_id: str) -> list[tuple[str, str]]:
    found = sql.rows(
        "SELECT line_key, body FROM upstream_lines WHERE submission = ? AND state = 'submitted'"
        " ORDER BY queued_at, line_key",
        (submission_id,),
    )
    return [(str(key), str(body)) for key, body in found]


def mark_submitted(sql: Sql, submission_id: str, upstream_id: str, next_look: float) -> None:
    sql.run(
        "UPDATE upstream_submissions SET state = 'submitted', upstream_id = ?, lease_until = ?"
        " WHERE id = ? AND state <> 'ended'",
        (upstream_id, next_look, submission_id),
    )


def end_submission(
    sql: Sql,
    submission_id: str,
    answers: Mapping[str, tuple[int, Any]],
    unanswered: tuple[int, Any],
    now: float,
) -> list[str]:
    """Record the upstream's answer for each of the submission's lines (`answers`: status and body
    by line key; a line missing from it gets `unanswered`) and end the submission, once; the keys
    answered (none: it had ended already)."""
    changed = sql.run(
        "UPDATE upstream_submissions SET state = 'ended', ended_at = ? WHERE id = ? AND state <> 'ended'",
        (now, submission_id),
    )
    if not changed:
        return []
    keys = [key for key, _ in submission_lines(sql, submission_id)]
    for key in keys:
        status, body = answers.get(key, unanswered)
        sql.run(
            "UPDATE upstream_lines SET state = 'answered', status = ?, response = ? WHERE line_key = ?",
            (status, dumps(body), key),
        )
    return keys


def open_counts(sql: Sql) -> dict[str, int]:
    """Lines by state, and submissions not ended (for status and tests)."""
    counts = {
        row[0]: int(row[1]) for row in sql.rows("SELECT state, COUNT(*) FROM upstream_lines GROUP BY state")
    }
    found = sql.rows("SELECT COUNT(*) FROM upstream_submissions WHERE state <> 'ended'")
    counts["open_submissions"] = int(found[0][0]) if found else 0
    return counts
