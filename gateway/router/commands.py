"""`gateway eval routing ...` (the learned router judged on labelled outcomes) and `gateway router
train ...` (its artifact)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_eval_commands(commands: Any) -> None:
    from gateway.router import evaluate

    evaluation = commands.add_parser("eval", help="judge the gateway's learned parts on labelled data")
    kinds = evaluation.add_subparsers(dest="eval_command", required=True)
    evaluate.add_arguments(
        kinds.add_parser("routing", help="the learned router against random routing and the oracle")
    )


def run_eval_command(args: argparse.Namespace) -> int:
    from gateway.embedding.embedder import EmbedderMissing
    from gateway.router import evaluate
    from gateway.router.outcomes import OutcomesError

    try:
        return evaluate.run(args)
    except (OutcomesError, EmbedderMissing, OSError) as error:
        print(f"gateway eval {args.eval_command}: {error}", file=sys.stderr)
        return 2


def add_router_commands(commands: Any) -> None:
    from gateway.router import training

    router = commands.add_parser("router", help="the learned router")
    actions = router.add_subparsers(dest="router_command", required=True)
    training.add_arguments(actions.add_parser("train", help="fit the router on labelled outcomes"))


def run_router_command(args: argparse.Namespace) -> int:
    from gateway.embedding.embedder import EmbedderMissing
    from gateway.router import training
    from gateway.router.outcomes import OutcomesError

    try:
        return training.run(args)
    except (OutcomesError, EmbedderMissing, OSError) as error:
        print(f"gateway router {args.router_command}: {error}", file=sys.stderr)
        return 2
