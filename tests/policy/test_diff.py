from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "policies" / "deployments.yaml")
BASE = """\
routes:
  frontier: {deployments: [gpt-4o]}
  local: {deployments: [smollm2]}
signals:
  tokens: {kind: size, of: prompt_tokens}
  tools: {kind: feature, of: tools}
rules:
  - {name: tools, when: {signal: tools, eq: true}, route: frontier}
  - {name: short, when: {signal: tokens, lt: 100}, route: local}
default_route: frontier
"""


def diff(tmp_path: Path, old: str, new: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    (tmp_path / "old.yaml").write_text(old)
    (tmp_path / "new.yaml").write_text(new)
    code = main(
        ["policy", "diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml"), "--config", CONFIG]
    )
    return code, capsys.readouterr().out.splitlines()


def test_formatting_alone_is_no_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reformatted = "# a comment\n" + BASE.replace(
        "{deployments: [gpt-4o]}", "\n    deployments:\n      - gpt-4o"
    )
    assert diff(tmp_path, BASE, reformatted, capsys) == (0, ["no change in meaning"])


def test_changes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    changed = BASE.replace("lt: 100", "lt: 300").replace("default_route: frontier", "default_route: local")
    code, lines = diff(tmp_path, BASE, changed, capsys)
    assert code == 1
    assert lines == [
        "~ rule short: {name: short, when: {signal: tokens, lt: 100}, route: local}"
        "  ->  {name: short, when: {signal: tokens, lt: 300}, route: local}",
        "~ default_route: 'frontier' -> 'local'",
    ]


def test_priority_moves_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools_rule, short_rule = BASE.splitlines()[7:9]
    swapped = BASE.replace(f"{tools_rule}\n{short_rule}", f"{short_rule}\n{tools_rule}")
    assert diff(tmp_path, BASE, swapped, capsys) == (1, ["~ rule priority: tools > short  ->  short > tools"])
