"""`gateway policy validate | test | explain | schema`: check and explain policies without serving."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydantic

from gateway.config import ConfigError, load_config
from gateway.ledger.reading import reading_ledger, since_time
from gateway.ledger.store import LedgerUnavailable
from gateway.policy.bench import run_policy_bench
from gateway.policy.compile import CompiledPolicy, PolicyError, golden_failure, load_policy
from gateway.policy.decide import decide
from gateway.policy.diff import policy_diff
from gateway.policy.records import decision_of, open_records, read_records
from gateway.policy.replay import format_report, replay
from gateway.policy.schema import GoldenRequest, Policy
from gateway.policy.signals import RequestFacts, load_signal_tools

DEFAULT_CONFIG = Path("policies/deployments.yaml")


def add_policy_commands(commands: Any) -> None:
    policy = commands.add_parser("policy", help="validate, test and explain routing policies")
    verbs = policy.add_subparsers(dest="policy_command", required=True)
    for verb, text in (("validate", "check policies: schema, references, golden cases"),
                       ("test", "run each policy's golden cases and show every result")):  # fmt: skip
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("policies", type=Path, nargs="+")
        _config_option(parser)
    explain = verbs.add_parser("explain", help="show the decision for a request, with every signal and rule")
    explain.add_argument("policy", type=Path)
    explain.add_argument(
        "request", type=Path, help="an OpenAI request body, or {body, team, key, role, tags}"
    )
    _config_option(explain)
    bench = verbs.add_parser("bench", help="time signals + decision on real prompts, and a 200-rule compile")
    bench.add_argument("policy", type=Path)
    bench.add_argument("data", type=Path, help="ShareGPT-style JSON or JSONL of OpenAI request bodies")
    bench.add_argument("--limit", type=int, default=1000, help="prompts to read")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    _config_option(bench)
    diff = verbs.add_parser(
        "diff", help="what changes between two policies: routes, signals, rules, priority"
    )
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    _config_option(diff)
    replay_cmd = verbs.add_parser("replay", help="re-decide recorded requests under a candidate policy")
    replay_cmd.add_argument("candidate", type=Path)
    replay_cmd.add_argument("--since", default="24h", help="how far back: e.g. 30m, 24h, 7d, or 'all'")
    replay_cmd.add_argument(
        "--records",
        type=Path,
        default=Path(".gateway/decisions.sqlite"),
        help="the gateway's recorded decisions (this replica's)",
    )
    replay_cmd.add_argument(
        "--ledger", action="store_true", help="replay the spend ledger's records instead (every replica's)"
    )
    replay_cmd.add_argument("--database-url", help="the ledger (default: $GATEWAY_DATABASE_URL or SQLite)")
    replay_cmd.add_argument(
        "--policy", help="with --ledger: replay the records of this policy (default: the candidate's name)"
    )
    replay_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    _config_option(replay_cmd)
    schema = verbs.add_parser("schema", help="write the policy JSON Schema (for editors)")
    schema.add_argument("--output", type=Path, default=Path("policies/schema.json"))


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="where the deployments are declared"
    )


def run_policy_command(args: argparse.Namespace) -> int:
    """Run one verb; a bad policy, file or argument is reported in a line or two, never a traceback."""
    try:
        return _run(args)
    except PolicyError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    except (ConfigError, OSError, ValueError, LedgerUnavailable, pydantic.ValidationError) as exc:
        print(exc, file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.policy_command == "schema":
        args.output.write_text(policy_json_schema())
        print(f"wrote {args.output}")
        return 0
    deployments = set(load_config(args.config).deployments)
    if args.policy_command == "replay":
        return _replay(args, deployments)
    if args.policy_command == "diff":
        return _diff(args.old, args.new, deployments)
    if args.policy_command == "bench":
        return run_policy_bench(args.policy, deployments, args.data, args.limit, args.rounds, args.json)
    if args.policy_command == "explain":
        return _explain(args.policy, args.request, deployments)
    return _validate(args.policies, deployments, run_golden=args.policy_command == "validate")


def _validate(paths: list[Path], deployments: set[str], *, run_golden: bool) -> int:
    """Every file is checked, so one run lists every problem; golden cases one by one with `test`."""
    tools = load_signal_tools()
    failed = False
    for path in paths:
        try:
            compiled = load_policy(path, deployments, tools, run_golden=run_golden)
        except PolicyError as exc:
            failed = True
            print("\n".join(exc.problems), file=sys.stderr)
            continue
        if run_golden:
            print(f"{path}: ok ({len(compiled.rules)} rules, {len(compiled.policy.tests)} golden cases)")
        else:
            failed |= not _report_golden(path, compiled)
    return 1 if failed else 0


def _replay(args: argparse.Namespace, deployments: set[str]) -> int:
    candidate = load_policy(args.candidate, deployments, load_signal_tools())
    since = since_time(args.since)
    if args.ledger:
        # Every replica's traffic, from the spend ledger; only the records of the policy it would replace.
        with reading_ledger(args.database_url) as ledger:
            rows = ledger.store.decisions(args.policy or candidate.name, since)
        report = replay([decision_of(row) for row in rows], candidate, progress=not args.json)
    else:
        db = open_records(args.records)
        try:
            report = replay(read_records(db, since), candidate, progress=not args.json)
        finally:
            db.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else format_report(report))
    return 0


def _diff(old_path: Path, new_path: Path, deployments: set[str]) -> int:
    """Both sides must be valid policies; exit 0 when they mean the same, 1 when they differ."""
    tools = load_signal_tools()
    try:
        old, new = (load_policy(path, deployments, tools, run_golden=False) for path in (old_path, new_path))
    except PolicyError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    changes = policy_diff(old.policy, new.policy)
    print("\n".join(changes) if changes else "no change in meaning")
    return 1 if changes else 0


def _report_golden(path: Path, compiled: CompiledPolicy) -> bool:
    passed = True
    for index, case in enumerate(compiled.policy.tests):
        failure = golden_failure(compiled, index)
        print(f"{path}: {'FAIL' if failure else 'ok  '} {case.name}{': ' + failure if failure else ''}")
        passed &= failure is None
    return passed


def _explain(policy_path: Path, request_path: Path, deployments: set[str]) -> int:
    compiled = load_policy(policy_path, deployments, load_signal_tools())
    raw = json.loads(request_path.read_text())
    request = GoldenRequest.model_validate(raw if "body" in raw else {"body": raw})
    facts = RequestFacts(
        body=request.body, team=request.team, key=request.key, role=request.role,
        tags=tuple(request.tags), request_id="explain", given=request.signals,
    )  # fmt: skip
    decision = decide(compiled, facts, explain=True)
    print(json.dumps(decision.as_json(), indent=2))
    return 0


def policy_json_schema() -> str:
    schema = Policy.model_json_schema(by_alias=True)
    schema["title"] = "Gateway routing policy"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
