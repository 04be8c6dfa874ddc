"""Model aliases: client model names mapped to `auto`, a route or a deployment, exact names first."""

from __future__ import annotations

import pytest

from gateway.policy.aliases import ModelAliases
from tests.policy.test_compile import BASE, compiled, problems


def test_an_exact_name_wins_over_a_pattern_and_patterns_go_in_order() -> None:
    aliases = ModelAliases.of(
        {"claude-*": "auto", "claude-haiku-*": "local", "claude-opus-4": "frontier", "*-mini": "local"}
    )
    assert aliases.target_of("claude-opus-4") == "frontier"
    assert aliases.target_of("claude-sonnet-4-5-20250929") == "auto"
    assert aliases.target_of("claude-haiku-4-5") == "auto"  # the earlier pattern matched first
    assert aliases.target_of("gpt-5-mini") == "local"
    assert aliases.target_of("gpt-5") is None
    assert aliases.target_of("xclaude-opus") is None  # a pattern matches the whole name


def test_a_pattern_is_literal_apart_from_its_stars() -> None:
    aliases = ModelAliases.of({"gpt-4.1*": "frontier"})
    assert aliases.target_of("gpt-4.1-nano") == "frontier"
    assert aliases.target_of("gpt-401") is None


def test_a_policy_compiles_its_aliases() -> None:
    policy = compiled(BASE + "model_aliases:\n  'claude-*': auto\n  gpt-5: local\n  tiny: small\n")
    assert policy.aliases.target_of("claude-sonnet-4-5") == "auto"
    assert policy.aliases.target_of("gpt-5") == "local"
    assert policy.aliases.target_of("tiny") == "small"


@pytest.mark.parametrize("target", ["nowhere", "Auto"])
def test_an_alias_to_nothing_is_refused_naming_it(target: str) -> None:
    found = problems(BASE + f"model_aliases:\n  'claude-*': {target}\n")
    assert any("model_aliases.claude-*" in problem and target in problem for problem in found), found
