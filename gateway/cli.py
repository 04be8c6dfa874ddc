"""The `gateway` command.

Only the command given is built: its module is imported when it runs, never for another command. So
`gateway serve` loads the serving code and nothing of the training, calibration, report or key-store
commands (numpy, onnxruntime, usearch, ruamel, redis... were a third of its start-up), and `gateway
--help` lists every command without importing any. A command that needs an extra that is not installed
(`train`) says which one, in a line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.extras import MissingExtra, install_hint

# How long a replica told to stop (SIGTERM) lets requests and streams in flight finish before it flushes
# its spend records and exits; a pod's termination grace period must exceed it (deploy/helm).
DRAIN_SECONDS = 30
# Modules that are in a source checkout only (pyproject.toml leaves them out of the wheel).
SOURCE_ONLY = ("gateway.bench", "gateway.fakes")

Run = Callable[[argparse.Namespace], int]
# Adds the command's parser to the subcommands and returns what runs it.
Build = Callable[[Any, str], Run]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="gateway", description="A multi-model routing gateway.")
    subcommands = parser.add_subparsers(dest="command", required=True)
    # The top level has no options but --help, so the first other word names the command.
    chosen = next((word for word in arguments if not word.startswith("-")), None)
    try:
        runs = {}
        for name, (text, build) in COMMANDS.items():
            if name == chosen:
                runs[name] = build(subcommands, text)
            else:
                subcommands.add_parser(name, help=text)
        args = parser.parse_args(arguments)
        return runs[args.command](args)
    except MissingExtra as exc:
        print(f"gateway {chosen}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        name = exc.name or ""
        hint = install_hint(name)
        source_only = [package for package in SOURCE_ONLY if f"{name}.".startswith(f"{package}.")]
        if hint is None and source_only:
            hint = f"{source_only[0]} is in a source checkout only, not in the package (`make test` there)"
        if hint is None:
            raise
        print(f"gateway {chosen}: {hint}", file=sys.stderr)
        return 2


def _serve_command(subcommands: Any, text: str) -> Run:
    serve = subcommands.add_parser("serve", help=text)
    serve.add_argument("--config", type=Path, help="the deployments (default: $GATEWAY_CONFIG)")
    serve.add_argument("--policy", type=Path, help="the routing policy (default: $GATEWAY_POLICY)")
    serve.add_argument("--host", help="address to bind (default: $GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $GATEWAY_PORT or 8080)")
    return _serve


def _check_config_command(subcommands: Any, text: str) -> Run:
    subcommands.add_parser("check-config", help=text).add_argument("config", type=Path)
    return _check_config


def _bench_command(subcommands: Any, text: str) -> Run:
    from gateway.bench.command import add_bench_arguments, run_bench_command

    add_bench_arguments(subcommands.add_parser("bench", help=text))
    return run_bench_command


def _policy_command(subcommands: Any, text: str) -> Run:
    from gateway.policy.commands import add_policy_commands, run_policy_command

    add_policy_commands(subcommands)
    return run_policy_command


def _keys_command(subcommands: Any, text: str) -> Run:
    from gateway.identity.commands import add_key_commands, run_key_command

    add_key_commands(subcommands)
    return run_key_command


def _spend_command(subcommands: Any, text: str) -> Run:
    from gateway.ledger.spend_commands import add_spend_command, run_spend_command

    add_spend_command(subcommands)
    return run_spend_command


def _cache_command(subcommands: Any, text: str) -> Run:
    from gateway.cache.commands import add_cache_commands, run_cache_command

    add_cache_commands(subcommands)
    return run_cache_command


def _eval_command(subcommands: Any, text: str) -> Run:
    from gateway.router.commands import add_eval_commands, run_eval_command

    add_eval_commands(subcommands)
    return run_eval_command


def _router_command(subcommands: Any, text: str) -> Run:
    from gateway.policy.calibrate import add_arguments, run_calibrate_command
    from gateway.router.commands import add_router_commands, run_router_command

    verbs = add_router_commands(subcommands)
    # Calibration edits a policy, so it lives with the policy; admins find it beside the router.
    text = "set a policy's router threshold from a target, on recorded traffic"
    add_arguments(verbs.add_parser("calibrate", help=text))

    def run(args: argparse.Namespace) -> int:
        if args.router_command == "calibrate":
            return run_calibrate_command(args)
        return run_router_command(args)

    return run


# Every command: its line in `gateway --help`, and how to build it when it is the one given.
COMMANDS: dict[str, tuple[str, Build]] = {
    "serve": ("serve the OpenAI-compatible API", _serve_command),
    "check-config": ("validate a configuration file and exit", _check_config_command),
    "bench": ("measure the gateway's overhead against a fake upstream", _bench_command),
    "policy": ("validate, test and explain routing policies", _policy_command),
    "keys": ("create, list, revoke and rotate virtual API keys", _keys_command),
    "spend": ("report spend and savings from the ledger", _spend_command),
    "cache": ("the semantic cache's verifier and thresholds", _cache_command),
    "eval": ("judge the gateway's learned parts on labelled data", _eval_command),
    "router": ("the learned router", _router_command),
}


def _check_config(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config

    try:
        load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: ok")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from gateway.app import create_app
    from gateway.config import ConfigError, load_config
    from gateway.ledger.store import check_database_url
    from gateway.policy.compile import PolicyError, load_policy
    from gateway.policy.signals import load_signal_tools
    from gateway.services import StartupError, check_exposure, has_any_key
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
