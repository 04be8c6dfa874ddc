"""`gateway policy diff OLD NEW`: what a policy change means — routes, signals and rules added, removed,
changed or moved in priority — rather than which lines of YAML moved."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy.schema import Policy


def policy_diff(old: Policy, new: Policy) -> list[str]:
    """One line per change, in the order an admin reads a policy; empty when they mean the same."""
    lines: list[str] = []
    lines += _named("route", _dump(old.routes), _dump(new.routes))
    lines += _named("signal", _dump(old.signals), _dump(new.signals))
    old_rules = {rule.name: rule.model_dump(by_alias=True, exclude_unset=True) for rule in old.rules}
    new_rules = {rule.name: rule.model_dump(by_alias=True, exclude_unset=True) for rule in new.rules}
    lines += _named("rule", old_rules, new_rules)
    kept_old = [name for name in old_rules if name in new_rules]
    kept_new = [name for name in new_rules if name in old_rules]
    if kept_old != kept_new:
        lines.append(f"~ rule priority: {' > '.join(kept_old)}  ->  {' > '.join(kept_new)}")
    for field in ("default_route", "fallback_route", "description"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            lines.append(f"~ {field}: {before!r} -> {after!r}")
    old_cases, new_cases = {c.name for c in old.tests}, {c.name for c in new.tests}
    lines += [f"+ golden case {name!r}" for name in sorted(new_cases - old_cases)]
    lines += [f"- golden case {name!r}" for name in sorted(old_cases - new_cases)]
    return lines


def _dump(models: Mapping[str, Any]) -> dict[str, Any]:
    return {name: model.model_dump(by_alias=True, exclude_unset=True) for name, model in models.items()}


def _named(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    lines = [f"+ {kind} {name}: {_show(new[name])}" for name in new if name not in old]
    lines += [f"- {kind} {name}" for name in old if name not in new]
    for name in old:
        if name in new and old[name] != new[name]:
            lines.append(f"~ {kind} {name}: {_show(old[name])}  ->  {_show(new[name])}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)
