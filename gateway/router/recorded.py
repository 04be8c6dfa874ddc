"""Outcome labels the gateway records for its router (`routing/shadow.py` writes them through the
decision log, `policy/records.DecisionLog`): one row a labelled request — when, whose, which rule and
routes, whether the cheaper route's answer agreed with the stronger one's and how that was decided
(`closed_form`, `judge`), and what the router reads of the prompt: its embedding and text counts,
never its text. Read back by `own_traffic.py`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only where outcomes are read back, never on the serving path
    import numpy as np
    import numpy.typing as npt

OUTCOMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    request_id TEXT NOT NULL,
    at REAL NOT NULL,
    team TEXT,
    rule TEXT NOT NULL,
    route TEXT NOT NULL,
    shadow_route TEXT NOT NULL,
    agree INTEGER NOT NULL,
    method TEXT NOT NULL,
    vector BLOB NOT NULL,
    counts BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_by_team ON outcomes (team, at);
"""
INSERT_OUTCOME = "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """One request's label as read back: whether the cheaper route's answer agreed with the stronger one's."""

    at: float
    team: str | None
    agree: bool
    vector: npt.NDArray[np.float32]
    counts: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    request_id: str
    at: float
    team: str | None
    rule: str
    route: str
    shadow_route: str
    agree: bool
    method: str
    vector: bytes  # float32
    counts: bytes  # float64

    def row(self) -> tuple[object, ...]:
        return (
            self.request_id, self.at, self.team, self.rule, self.route, self.shadow_route,
            int(self.agree), self.method, self.vector, self.counts,
        )  # fmt: skip


def read_outcomes(path: Path, team: str | None = None) -> list[RecordedOutcome]:
    """The labelled requests in a decision log (of one team, or all), oldest first."""
    import numpy as np

    if not path.exists():
        raise FileNotFoundError(f"{path}: no decision log (has the gateway recorded any shadow copy?)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = "SELECT at, team, agree, vector, counts FROM outcomes"
        rows = db.execute(
            query + (" WHERE team = ?" if team else "") + " ORDER BY at", (team,) if team else ()
        )
        return [
            RecordedOutcome(
                float(at),
                found_team,
                bool(agree),
                np.frombuffer(vector, dtype=np.float32).copy(),
                np.frombuffer(counts, dtype=np.float64).copy(),
            )
            for at, found_team, agree, vector, counts in rows.fetchall()
        ]
    except sqlite3.OperationalError as error:  # a log from before outcomes were recorded
        raise FileNotFoundError(f"{path}: no recorded outcomes ({error})") from None
    finally:
        db.close()
