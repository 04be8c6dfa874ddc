"""Spend reports as finance reads them (API and CLI alike): the query's parameters from text, and
the rows as CSV or a table."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.ledger.schema import GROUPS, REPORT_FIELDS


class BadReportQuery(ValueError):
    """A report parameter that cannot be understood; the message says why, `param` which."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_groups(text: str | None) -> list[str]:
    """`team,route` → ["team", "route"], checked against what a report can group by."""
    groups = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [group for group in groups if group not in GROUPS]
    if unknown:
        choices = ", ".join(GROUPS)
        raise BadReportQuery(f"cannot group spend by {', '.join(unknown)}; choose from {choices}", "group_by")
    if len(set(groups)) != len(groups):
        raise BadReportQuery("each group may be named once", "group_by")
    return groups


def parse_moment(text: str | None, name: str) -> float | None:
    """A day (`2026-11-01`, midnight UTC), an ISO time, or unix seconds."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        expected = "expected a day (2026-11-01), an ISO time or unix seconds"
        raise BadReportQuery(f"{name}: {expected}, not {text!r}", name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def columns_of(groups: Sequence[str]) -> list[str]:
    return [*groups, *REPORT_FIELDS]


def as_csv(groups: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns_of(groups), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: _cell(value) for name, value in row.items()})
    return out.getvalue()


def as_table(groups: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    columns = columns_of(groups)
    cells = [[_cell(row.get(name)) for name in columns] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
