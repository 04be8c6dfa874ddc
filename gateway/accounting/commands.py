"""`gateway keys create | list | revoke | rotate`: manage virtual keys in the gateway's key store.

A running gateway picks changes up within a few seconds; the secret is printed once, on create and
rotate, and never stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.accounting.keys import ROLES, KeyNotFound, KeysUnavailable, open_key_store
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
            print(json.dumps({**key.public(), "key": secret}, indent=2))
        elif args.keys_command == "list":
            print(json.dumps([key.public() for key in store.list(include_revoked=args.all)], indent=2))
        elif args.keys_command == "revoke":
            print(json.dumps(store.revoke(args.key_id).public(), indent=2))
        else:
            key, secret = store.rotate(args.key_id)
            print(json.dumps({**key.public(), "key": secret}, indent=2))
    except (KeyNotFound, KeysUnavailable, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
