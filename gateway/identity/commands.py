"""`gateway keys create | list | revoke | rotate`: manage virtual keys in the gateway's key store.

The secret is printed once, on create and rotate, and never stored. With GATEWAY_REDIS_URL set, every
running gateway hears of the change through Redis at once (`key_changes.py`); without it, each picks it
up at its next background refresh (2 s). Teams and names are checked as the admin API checks them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.identity.key_backends import open_key_store
from gateway.identity.key_changes import publish_once
from gateway.identity.keys import ROLES, KeyChange, KeyNotFound, KeysUnavailable
from gateway.settings import Settings


def add_key_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke and rotate virtual API keys")
    verbs = keys.add_subparsers(dest="keys_command", required=True)
    create = verbs.add_parser("create", help="create a key (its secret is printed once)")
    create.add_argument("--team", required=True)
    create.add_argument("--role", choices=ROLES, default="client")
    create.add_argument("--name", default="")
    listing = verbs.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    for verb in ("revoke", "rotate"):
        verbs.add_parser(verb, help=f"{verb} a key").add_argument("key_id")


def run_key_command(args: argparse.Namespace) -> int:
    settings = Settings()
    store = open_key_store(settings.database_url, settings.state_dir)
    try:
        if args.keys_command == "create":
            key, secret = store.create(args.team, args.role, args.name)
            _tell_gateways(settings, KeyChange(key.id, "create"))
            print(json.dumps({**key.public(), "key": secret}, indent=2))
        elif args.keys_command == "list":
            print(json.dumps([key.public() for key in store.list(include_revoked=args.all)], indent=2))
        elif args.keys_command == "revoke":
            key = store.revoke(args.key_id)
            _tell_gateways(settings, KeyChange(key.id, "revoke"))
            print(json.dumps(key.public(), indent=2))
        else:
            key, secret = store.rotate(args.key_id)
            _tell_gateways(settings, KeyChange(key.id, "rotate"))
            print(json.dumps({**key.public(), "key": secret}, indent=2))
    except (KeyNotFound, KeysUnavailable, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _tell_gateways(settings: Settings, change: KeyChange) -> None:
    """Publish the change for the running gateways (with Redis); a failure is reported, not fatal: the
    change is in the database, and they read it at their next refresh."""
    if not settings.redis_url:
        return
    failure = publish_once(settings.redis_url, settings.redis_prefix, change)
    if failure is not None:
        print(
            f"warning: could not tell the running gateways through Redis ({failure}); "
            "they pick the change up within their refresh interval (2 s)",
            file=sys.stderr,
        )
