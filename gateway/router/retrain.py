"""`gateway router retrain` and `gateway eval routing --recorded`: a team's router from its own
labelled traffic (`own_traffic.py`), judged on the later part of it. `eval` prints the held-out table
(and `--json`, `--png`); `retrain` also keeps the better model as the team's next version, with its card,
under `--output-dir`/TEAM. Labels come from the decision log of the state directory (`--decisions`),
where shadow copies record them (`routing/shadow.py`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import orjson

from gateway.extras import require
from gateway.router.knn import DEFAULT_K
from gateway.router.own_traffic import (
    HELD_OUT_SHARE,
    evaluate,
    held_out_curves,
    plot,
    print_table,
    write_kept,
)

DEFAULT_DECISIONS = Path(".gateway/decisions.sqlite")
DEFAULT_OUTPUT = Path(".gateway/routers")


def add_arguments(parser: argparse.ArgumentParser, *, writes: bool) -> None:
    parser.add_argument("--team", help="one team's traffic (default: every team's)")
    parser.add_argument("--decisions", type=Path, default=DEFAULT_DECISIONS, help="the decision log (SQLite)")
    parser.add_argument("--held-out", type=float, default=HELD_OUT_SHARE, help="the later share judged on")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours for the kNN model")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    if writes:
        parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)


def run(args: argparse.Namespace, *, writes: bool) -> int:
    from gateway.router.recorded import read_outcomes

    require("sklearn", *(["matplotlib"] if args.png else []))
    rows = read_outcomes(args.decisions, team=args.team)
    try:
        retrained, state = evaluate(rows, args.held_out, args.k)
    except ValueError as error:
        print(f"{args.decisions}: {error}", file=sys.stderr)
        return 1
    print_table(retrained)
    if args.json:
        figures = {
            "team": retrained.team,
            "fitted": retrained.fitted,
            "results": [asdict(r) for r in retrained.results],
        }
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    curves = held_out_curves(state)
    if args.png:
        plot(args.png, retrained, curves)
        print(f"wrote {args.png}", file=sys.stderr)
    if writes:
        path = write_kept(retrained, state, args.output_dir / (args.team or "all"), curves)
        print(f"wrote {path} ({retrained.kept.model}); use it as a learned_score signal's model")
    return 0
