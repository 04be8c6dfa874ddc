"""`gateway eval routing ...` (the learned router judged on labelled outcomes) and `gateway router
train ...` (its artifact)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_eval_commands(commands: Any) -> None:
    from gateway.router import cascade, evaluate

    evaluation = commands.add_parser("eval", help="judge the gateway's learned parts on labelled data")
    kinds = evaluation.add_subparsers(dest="eval_command", required=True)
    evaluate.add_arguments(
        kinds.add_parser("routing", help="the learned router against random routing and the oracle")
    )
    cascade.add_arguments(
        kinds.add_parser("cascade", help="a local-first cascade against the router, with its added latency")
    )


def run_eval_command(args: argparse.Namespace) -> int:
    from gateway.embedding.embedder import EmbedderMissing
    from gateway.router import cascade, evaluate, retrain
    from gateway.router.outcomes import OutcomesError

    try:
        if args.eval_command == "routing" and args.recorded:
            return retrain.run(args, writes=False)
        return {"routing": evaluate.run, "cascade": cascade.run}[args.eval_command](args)
    except (OutcomesError, EmbedderMissing, OSError) as error:
        print(f"gateway eval {args.eval_command}: {error}", file=sys.stderr)
        return 2


def add_router_commands(commands: Any) -> Any:
    """The `gateway router` verbs of this package; returns them, for `calibrate` (gateway.policy) to join."""
    from gateway.router import bench, feedback_data, retrain, training

    router = commands.add_parser("router", help="the learned router")
    actions = router.add_subparsers(dest="router_command", required=True)
    training.add_arguments(actions.add_parser("train", help="fit the router on labelled outcomes"))
    retrain.add_arguments(
        actions.add_parser("retrain", help="a team's router from its own labelled traffic, as a new version"),
        writes=True,
    )
    feedback_data.add_arguments(
        actions.add_parser("feedback", help="write the rated traffic in the ledger as labelled outcomes")
    )
    bench.add_arguments(actions.add_parser("bench", help="time the router signal beyond the embedding"))
    return actions


def run_router_command(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError
    from gateway.embedding.embedder import EmbedderMissing
    from gateway.ledger.store import LedgerUnavailable
    from gateway.router import bench, feedback_data, retrain, training
    from gateway.router.model import RouterMissing
    from gateway.router.outcomes import OutcomesError

    commands = {"train": training.run, "feedback": feedback_data.run, "bench": bench.run}
    try:
        if args.router_command == "retrain":
            return retrain.run(args, writes=True)
        return commands[args.router_command](args)
    except (
        OutcomesError,
        EmbedderMissing,
        RouterMissing,
        ConfigError,
        LedgerUnavailable,
        ValueError,
        OSError,
    ) as error:
        print(f"gateway router {args.router_command}: {error}", file=sys.stderr)
        return 2
