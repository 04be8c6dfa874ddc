"""`gateway router feedback --output F.jsonl`: a team's rated traffic as labelled outcomes, so its own
prompts can train (`gateway router train F.jsonl ...`), judge (`gateway eval routing`) and calibrate
(`gateway router calibrate --quality 0.95 --labelled F.jsonl`) the learned router.

A rated request says how well the route that answered it did, not how the other would have. So:

- a request the local route answered gives the weak model's score: its rating (0 bad … 1 good);
- the frontier's score for it is unknown; the frontier's mean rating over the same period stands in
  (1.0, "the frontier would have done well", when no frontier answer was rated);
- the local answer is kept as `weak_answer`, so `gateway eval cascade` can judge a cascade on it;
- requests the frontier answered only feed that mean; requests without a logged prompt (the policy does
  not log bodies) or without a rating cannot be used and are counted.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from statistics import fmean

import orjson

from gateway.ledger.feedback import RatedRequest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, required=True, help="labelled outcomes, JSON lines")
    parser.add_argument("--local-route", default="local", help="the route whose answers are the weak model's")
    parser.add_argument(
        "--frontier-route", default="frontier", help="the route whose ratings give the strong score"
    )
    parser.add_argument("--since", default="all", help="feedback this far back: 24h, 30d, or 'all'")
    parser.add_argument("--database-url", help="the ledger (default: $GATEWAY_DATABASE_URL or SQLite)")


def logged_exchange(body: str) -> tuple[str | None, str | None]:
    """The last user turn and the answer of a logged body (`ledger.redact.logged_body`)."""
    try:
        logged = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(logged, dict):
        return None, None
    messages = logged.get("messages") or []
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    answer = logged.get("answer")
    return (str(users[-1]) if users and users[-1] else None), (str(answer) if answer else None)


def outcomes_of(
    rated: list[RatedRequest], local_route: str, frontier_route: str
) -> tuple[list[dict[str, object]], Counter[str]]:
    """The JSON lines `gateway router train` reads, and what was left out, by reason."""
    frontier = [r.rating for r in rated if r.route == frontier_route and r.rating is not None]
    strong = fmean(frontier) if frontier else 1.0
    rows: list[dict[str, object]] = []
    skipped: Counter[str] = Counter()
    for request in rated:
        prompt, answer = logged_exchange(request.body) if request.body else (None, None)
        if request.route != local_route:
            skipped[f"answered by {request.route or 'no route'}"] += 1
        elif request.rating is None:
            skipped["labelled, not rated"] += 1
        elif prompt is None:
            skipped["prompt not logged"] += 1
        else:
            row = {
                "prompt": prompt,
                "weak": request.rating,
                "strong": strong,
                "request_id": request.request_id,
            }
            if answer is not None:  # the local answer: `gateway eval cascade` can judge a cascade on it
                row["weak_answer"] = answer
            rows.append(row)
    return rows, skipped


def run(args: argparse.Namespace) -> int:
    from gateway.ledger.reading import reading_ledger, since_time

    with reading_ledger(args.database_url) as ledger:
        rated = ledger.store.rated_requests(since_time(args.since))
    rows, skipped = outcomes_of(rated, args.local_route, args.frontier_route)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    left_out = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()) or "none"
    print(f"wrote {args.output}: {len(rows):,} rated prompts of route {args.local_route!r}")
    print(f"left out: {left_out}")
    if not rows:
        print(
            "no usable feedback: rate local answers, and log bodies in the policy to keep prompts",
            file=sys.stderr,
        )
        return 1
    return 0
