"""Client model names mapped to what the gateway routes them to (`model_aliases` in a policy).

Clients that cannot send `auto` (Claude Code asks for `claude-sonnet-…`, Codex for `gpt-5-…`) still get
the policy's routing: `claude-*: auto` sends every such name through the rules, `gpt-5*: frontier` to a
route, and a deployment's name pins it. An exact name wins over a pattern; patterns (`*` matches any
run of characters) are tried in the order they are written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The model name that asks the policy's rules to decide.
AUTO = "auto"


@dataclass(frozen=True, slots=True)
class ModelAliases:
    exact: Mapping[str, str]
    patterns: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def of(cls, aliases: Mapping[str, str]) -> ModelAliases:
        exact = {name: target for name, target in aliases.items() if "*" not in name}
        patterns = tuple(
            (re.compile(".*".join(re.escape(part) for part in name.split("*"))), target)
            for name, target in aliases.items()
            if "*" in name
        )
        return cls(exact, patterns)

    def target_of(self, model: str) -> str | None:
        """What the client's model name is routed to: `auto`, a route or a deployment; None when no
        alias names it."""
        target = self.exact.get(model)
        if target is not None:
            return target
        for pattern, target in self.patterns:
            if pattern.fullmatch(model):
                return target
        return None


NO_ALIASES = ModelAliases({}, ())
