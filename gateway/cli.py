"""The `gateway` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.identity.commands import add_key_commands, run_key_command
from gateway.ledger.spend_commands import add_spend_command, run_spend_command
from gateway.cache.commands import add_cache_commands, run_cache_command
from gateway.config import ConfigError, load_config
from gateway.policy.calibrate import add_arguments as add_calibrate_arguments
from gateway.policy.calibrate import run_calibrate_command
from gateway.policy.commands import add_policy_commands, run_policy_command
from gateway.router.commands import (
    add_eval_commands,
    add_router_commands,
    run_eval_command,
    run_router_command,
)

# How long a replica told to stop (SIGTERM) lets requests and streams in flight finish before it flushes
# its spend records and exits; a pod's termination grace period must exceed it (deploy/helm).
DRAIN_SECONDS = 30


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="A multi-model routing gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API")
    serve.add_argument("--config", type=Path, help="the deployments (default: $GATEWAY_CONFIG)")
    serve.add_argument("--policy", type=Path, help="the routing policy (default: $GATEWAY_POLICY)")
    serve.add_argument("--host", help="address to bind (default: $GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $GATEWAY_PORT or 8080)")

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config", type=Path)

    bench = commands.add_parser("bench", help="measure the gateway's overhead against a fake upstream")
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    bench.add_argument("--no-litellm", action="store_true", help="skip LiteLLM proxy even if installed")

    add_policy_commands(commands)
    add_key_commands(commands)
    add_spend_command(commands)
    add_cache_commands(commands)
    add_eval_commands(commands)
    router_verbs = add_router_commands(commands)
    # Calibration edits a policy, so it lives with the policy; admins find it beside the router.
    add_calibrate_arguments(
        router_verbs.add_parser(
            "calibrate", help="set a policy's router threshold from a target, on recorded traffic"
        )
    )

    args = parser.parse_args(argv)
    if args.command == "policy":
        return run_policy_command(args)
    if args.command == "keys":
        return run_key_command(args)
    if args.command == "spend":
        return run_spend_command(args)
    if args.command == "cache":
        return run_cache_command(args)
    if args.command == "eval":
        return run_eval_command(args)
    if args.command == "router":
        if args.router_command == "calibrate":
            return run_calibrate_command(args)
        return run_router_command(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        try:
            load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{args.config}: ok")
        return 0
    from gateway.bench.run import run_bench  # the benchmark's own imports stay out of `serve`

    return run_bench(json_path=args.json, duration=args.duration, with_litellm=not args.no_litellm)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.ledger.store import check_database_url
    from gateway.app import create_app
    from gateway.policy.compile import PolicyError, load_policy
    from gateway.policy.signals import load_signal_tools
    from gateway.runtime import StartupError, check_exposure, has_any_key
    from gateway.settings import Settings
    from gateway.tokens import TokenCounter

    given = {"config": args.config, "policy": args.policy, "host": args.host, "port": args.port}
    overrides = {k: v for k, v in given.items() if v}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        deployments = load_config(settings.config).deployments
        check_exposure(settings.host, has_keys=has_any_key(settings))
        check_database_url(settings.database_url)
        load_policy(settings.policy, deployments, load_signal_tools(TokenCounter(), settings.embedder_path))
    except (ConfigError, StartupError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except PolicyError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # the client address is not trusted from headers, and it costs time
            log_level=settings.log_level,
            timeout_graceful_shutdown=DRAIN_SECONDS,
        )
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown, which would end the process with -15;
    # a drained, flushed shutdown on SIGTERM is a success, so that re-raise lands on a no-op here.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
