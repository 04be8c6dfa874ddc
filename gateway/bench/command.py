"""The `gateway bench` command line: its arguments, and how they reach `run_bench`.

Kept apart from gateway.bench.run so that building the parser imports nothing of the benchmark.
`python -m gateway.bench.command` takes the same arguments as `gateway bench`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from gateway.bench.depth_rows import CACHE_ENTRIES, DEFAULT_PROMPTS, DEPTH_ROWS


def add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    bench.add_argument("--no-litellm", action="store_true", help="skip LiteLLM proxy even if installed")
    only = bench.add_mutually_exclusive_group()
    only.add_argument("--no-depth", action="store_true", help="skip the depth table")
    only.add_argument(
        "--depth-only", action="store_true", help="only the depth table (and the floor it is compared with)"
    )
    bench.add_argument(
        "--depth-rows",
        type=_rows,
        default=DEPTH_ROWS,
        metavar="NAMES",
        help=f"comma-separated depth rows to run (default: all of {','.join(DEPTH_ROWS)})",
    )
    bench.add_argument(
        "--gateway-pythonpath",
        type=Path,
        metavar="DIR",
        help="run the gateways (not the floor, the fake or the bench) with PYTHONPATH=DIR, e.g. an older "
        "checkout's worktree",
    )
    bench.add_argument(
        "--cache-entries",
        type=int,
        default=CACHE_ENTRIES,
        help=f"entries in the semantic cache hit row's cache (default {CACHE_ENTRIES:,})",
    )
    bench.add_argument(
        "--prompts",
        type=Path,
        default=DEFAULT_PROMPTS,
        help="ShareGPT-style JSON whose first human turns the depth rows send (default: %(default)s)",
    )
    bench.add_argument(
        "--embedder",
        type=Path,
        help="the embedder model the gateways use (default: GATEWAY_EMBEDDER_PATH's default, from here)",
    )


def _rows(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DEPTH_ROWS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"no depth row {', '.join(unknown)} (the rows: {', '.join(DEPTH_ROWS)})"
        )
    return names


def run_bench_command(args: argparse.Namespace) -> int:
    from gateway.bench.run import run_bench  # the benchmark's own imports stay out of `serve`

    tables: Literal["both", "main", "depth"] = (
        "main" if args.no_depth else "depth" if args.depth_only else "both"
    )
    return run_bench(
        json_path=args.json,
        duration=args.duration,
        with_litellm=not args.no_litellm,
        tables=tables,
        depth_rows=args.depth_rows,
        gateway_pythonpath=args.gateway_pythonpath,
        cache_entries=args.cache_entries,
        prompts=args.prompts,
        embedder=args.embedder,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.command", description=__doc__.split("\n")[0]
    )
    add_bench_arguments(parser)
    return run_bench_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
