"""What-if: re-decide recorded requests under a candidate policy, before it ships.

Each record holds the signal values its decision looked at, never the prompt. A candidate that needs
a signal a record lacks cannot decide that record; such records are counted as not replayable, by
signal, rather than guessed. Latency is estimated from what each route took in the same records.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from gateway.policy.compile import CompiledPolicy
from gateway.policy.decide import decide
from gateway.policy.records import DecisionRecord
from gateway.policy.signals import MissingSignal, RequestFacts


@dataclass
class ReplayReport:
    records: int = 0
    replayed: int = 0
    unchanged: int = 0
    missing_signals: Counter[str] = field(default_factory=Counter)
    # (recorded rule, recorded route) -> (candidate rule, candidate route) -> count
    moves: dict[tuple[str, str], Counter[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    routes_before: Counter[str] = field(default_factory=Counter)
    routes_after: Counter[str] = field(default_factory=Counter)
    changed_by_team: Counter[str] = field(default_factory=Counter)
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": self.replayed - self.unchanged,
            "not_replayable": sum(self.missing_signals.values()),
            "missing_signals": dict(self.missing_signals),
            "routes_before": dict(self.routes_before),
            "routes_after": dict(self.routes_after),
            "changes": [
                {
                    "from_rule": old[0],
                    "from_route": old[1],
                    "to_rule": new[0],
                    "to_route": new[1],
                    "requests": n,
                }
                for old, targets in sorted(self.moves.items())
                for new, n in sorted(targets.items())
                if new != old
            ],
            "changed_by_team": dict(self.changed_by_team),
            "estimated_mean_latency_ms": {
                "recorded": self.latency_before_ms,
                "candidate": self.latency_after_ms,
            },
        }


def replay(
    records: Iterable[DecisionRecord], candidate: CompiledPolicy, *, progress: bool = False
) -> ReplayReport:
    report = ReplayReport()
    rows = list(records)
    latency_by_route: dict[str, list[float]] = defaultdict(list)
    for record in rows:
        if record.status == 200:
            latency_by_route[record.route].append(record.latency_ms)
    route_latency = {route: fmean(values) for route, values in latency_by_route.items()}
    before: list[float] = []
    after: list[float] = []
    step = max(1, len(rows) // 20)
    for index, record in enumerate(rows, 1):
        report.records += 1
        facts = RequestFacts(
            body={}, team=record.team, request_id=record.request_id, given=record.signals, only_given=True
        )
        try:
            decision = decide(candidate, facts)
        except MissingSignal as missing:
            report.missing_signals[missing.name] += 1
            continue
        report.replayed += 1
        old, new = (record.rule, record.route), (decision.rule, decision.route)
        report.moves[old][new] += 1
        report.routes_before[record.route] += 1
        report.routes_after[decision.route] += 1
        if old == new:
            report.unchanged += 1
        else:
            report.changed_by_team[record.team or "(none)"] += 1
        if record.route in route_latency and decision.route in route_latency:
            before.append(route_latency[record.route])
            after.append(route_latency[decision.route])
        if progress and (index % step == 0 or index == len(rows)):
            print(
                f"\rreplayed {index:,}/{len(rows):,} ({index * 100 // len(rows)}%)", end="", file=sys.stderr
            )
    if progress and rows:
        print(file=sys.stderr)
    if before:
        report.latency_before_ms, report.latency_after_ms = round(fmean(before), 3), round(fmean(after), 3)
    return report


def format_report(report: ReplayReport) -> str:
    data = report.as_json()
    lines = [
        f"records: {data['records']:,}   replayed: {data['replayed']:,}   unchanged: {data['unchanged']:,}   "
        f"changed: {data['changed']:,}   not replayable: {data['not_replayable']:,}",
    ]
    if data["missing_signals"]:
        missing = ", ".join(f"{name} ({n:,})" for name, n in sorted(data["missing_signals"].items()))
        lines.append(f"not recorded, needed by the candidate: {missing}")
    lines.append("")
    lines.append("| route | recorded | candidate |")
    lines.append("|---|--:|--:|")
    for route in sorted(set(data["routes_before"]) | set(data["routes_after"])):
        lines.append(
            f"| {route} | {data['routes_before'].get(route, 0):,} | {data['routes_after'].get(route, 0):,} |"
        )
    if data["changes"]:
        lines += ["", "| from rule → route | to rule → route | requests |", "|---|---|--:|"]
        for change in data["changes"]:
            source = f"{change['from_rule']} → {change['from_route']}"
            target = f"{change['to_rule']} → {change['to_route']}"
            lines.append(f"| {source} | {target} | {change['requests']:,} |")
    if data["changed_by_team"]:
        teams = ", ".join(f"{team}: {n:,}" for team, n in sorted(data["changed_by_team"].items()))
        lines += ["", f"changed by team: {teams}"]
    latency = data["estimated_mean_latency_ms"]
    if latency["recorded"] is not None:
        lines += [
            "",
            f"estimated mean latency: {latency['recorded']} ms recorded → {latency['candidate']} ms",
        ]
    return "\n".join(lines)
