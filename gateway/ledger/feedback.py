"""Feedback on answered requests (`POST /v1/feedback`): a rating from 0 (bad) to 1 (good) and/or a short
label, kept in the ledger's database beside the request it is about, so a team's own outcomes can become
the learned router's training data (`gateway router feedback`).

Only requests the ledger holds can be rated, and a key can rate only its own team's requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FEEDBACK_COLUMNS = ("id", "request_id", "at", "team", "key_id", "rating", "label", "comment")


@dataclass(frozen=True, slots=True)
class Feedback:
    id: str
    request_id: str
    at: float
    # The rater's team; None when an admin rated it (admins may rate any team's request).
    team: str | None
    key_id: str | None
    rating: float | None
    label: str | None
    comment: str | None


@dataclass(frozen=True, slots=True)
class RatedRequest:
    """A ledger record with the latest feedback given for it."""

    request_id: str
    at: float
    team: str | None
    route: str | None
    # The logged (redacted) request and answer, when the policy logs bodies; else None.
    body: str | None
    rating: float | None
    label: str | None


def row_of_feedback(feedback: Feedback) -> tuple[object, ...]:
    return tuple(getattr(feedback, column) for column in FEEDBACK_COLUMNS)


def insert_feedback_sql(placeholder: str) -> str:
    values = ", ".join([placeholder] * len(FEEDBACK_COLUMNS))
    return f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({values})"


def request_known_sql(placeholder: str, team: str | None) -> tuple[str, list[object]]:
    """`SELECT` of one ledger row for the request (within the team, when one is given)."""
    if team is None:
        return f"SELECT 1 FROM ledger WHERE request_id = {placeholder} LIMIT 1", []
    return f"SELECT 1 FROM ledger WHERE request_id = {placeholder} AND team = {placeholder} LIMIT 1", [team]


def rated_requests_sql(placeholder: str) -> str:
    """Ledger records joined with their feedback given since a time, oldest feedback first (so a later
    rating of the same request replaces an earlier one when read in order)."""
    return (
        "SELECT l.request_id, l.at, l.team, l.route, l.body, f.rating, f.label FROM feedback f"
        " JOIN ledger l ON l.request_id = f.request_id AND (f.team IS NULL OR l.team = f.team)"
        f" WHERE f.at >= {placeholder} AND l.status < 400 ORDER BY f.at, f.id"
    )


def latest_per_request(rows: Sequence[Sequence[Any]]) -> list[RatedRequest]:
    latest: dict[str, RatedRequest] = {}
    for request_id, at, team, route, body, rating, label in rows:
        latest[str(request_id)] = RatedRequest(
            str(request_id),
            float(at),
            None if team is None else str(team),
            None if route is None else str(route),
            None if body is None else str(body),
            None if rating is None else float(rating),
            None if label is None else str(label),
        )
    return list(latest.values())
