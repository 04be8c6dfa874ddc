"""`gateway spend`: spend grouped by team, route, model, rule or day, with savings, read from the
ledger (after draining what the spool still holds), as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.ledger.reading import reading_ledger
from gateway.ledger.schema import GROUPS
from gateway.ledger.spend_report import BadReportQuery, as_csv, as_table, parse_groups, parse_moment
from gateway.ledger.store import LedgerUnavailable


def add_spend_command(commands: Any) -> None:
    spend = commands.add_parser("spend", help="report spend and savings from the ledger")
    spend.add_argument("--by", default="team", help=f"comma-separated groups: {', '.join(GROUPS)}")
    spend.add_argument("--since", help="a day (2026-11-01), ISO time or unix seconds")
    spend.add_argument("--until", help="exclusive; same forms as --since")
    spend.add_argument("--team", help="only this team")
    spend.add_argument("--format", choices=("table", "json", "csv"), default="table")
    spend.add_argument("--database-url", help="the ledger (default: $GATEWAY_DATABASE_URL or SQLite)")


def run_spend_command(args: argparse.Namespace) -> int:
    try:
        groups = parse_groups(args.by)
        since, until = parse_moment(args.since, "since"), parse_moment(args.until, "until")
        with reading_ledger(args.database_url) as ledger:
            rows = ledger.report(groups, since, until, args.team)
    except (BadReportQuery, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except LedgerUnavailable as exc:
        print(f"the ledger's database is unavailable: {exc}", file=sys.stderr)
        return 1
    if args.format == "csv":
        sys.stdout.write(as_csv(groups, rows))
    elif args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(as_table(groups, rows))
    return 0
