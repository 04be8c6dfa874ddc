"""`gateway cache ...`: train the verifier and calibrate the semantic cache's threshold."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_cache_commands(commands: Any) -> None:
    cache = commands.add_parser("cache", help="the semantic cache's verifier and thresholds")
    actions = cache.add_subparsers(dest="cache_command", required=True)
    from gateway.cache import calibrate, verifier_training

    calibrate.add_arguments(
        actions.add_parser("calibrate", help="precision/recall on labelled pairs, and the threshold to use")
    )
    verifier_training.add_arguments(
        actions.add_parser("train-verifier", help="train the verifier on labelled pairs (needs torch)")
    )


def run_cache_command(args: argparse.Namespace) -> int:
    from gateway.cache import calibrate, verifier_training
    from gateway.cache.pairs import PairsError
    from gateway.cache.verifier import VerifierMissing
    from gateway.embedding.embedder import EmbedderMissing

    try:
        if args.cache_command == "calibrate":
            return calibrate.run(args)
        return verifier_training.run(args)
    except (PairsError, VerifierMissing, EmbedderMissing, OSError) as error:
        print(f"gateway cache {args.cache_command}: {error}", file=sys.stderr)
        return 2
