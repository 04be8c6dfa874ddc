"""Tests for the safe YAML front door: lines, bomb/anchor/merge/duplicate rejection, limits, error text."""

from __future__ import annotations

import time
from pathlib import Path

import pydantic
import pytest

from gateway.policy.source import (
    PolicySource,
    PolicySourceError,
    describe_validation_error,
    load_policy_file,
    load_policy_source,
)

POLICY = """\
# a routing policy
version: 1
rules:
  - name: cheap
    when:
      max_tokens: 100
    route: local
  - name: smart
    route: frontier
flags: [true, null, 1.5, "2"]
"""


def _err(text: str, **limits: int) -> PolicySourceError:
    with pytest.raises(PolicySourceError) as info:
        load_policy_source(text, "p.yaml", **limits)
    return info.value


def test_data_matches_safe_load_and_lines_are_recorded() -> None:
    src = load_policy_source(POLICY, "p.yaml")
    assert src.data == {
        "version": 1,
        "rules": [
            {"name": "cheap", "when": {"max_tokens": 100}, "route": "local"},
            {"name": "smart", "route": "frontier"},
        ],
        "flags": [True, None, 1.5, "2"],
    }
    assert src.lines[()] == 2
    assert src.lines[("version",)] == 2
    assert src.lines[("rules",)] == 3
    assert src.lines[("rules", 0)] == 4
    assert src.lines[("rules", 0, "when")] == 5
    assert src.lines[("rules", 0, "when", "max_tokens")] == 6
    assert src.lines[("rules", 1)] == 8
    assert src.lines[("rules", 1, "route")] == 9
    assert src.lines[("flags", 3)] == 10


def test_line_of_falls_back_to_deepest_known_prefix() -> None:
    src = load_policy_source(POLICY, "p.yaml")
    assert src.line_of(("rules", 0, "when", "max_tokens", "deeper")) == 6
    assert src.line_of(("rules", 1, "missing_field")) == 8
    assert src.line_of(("rules", 0, "function-after[check()]", "route")) == 7  # union/validator tags skipped
    assert src.line_of(()) == 2
    assert PolicySource("p", None, {}).line_of(("x",)) is None


def test_empty_file_is_none() -> None:
    assert load_policy_source("", "p.yaml").data is None
    assert load_policy_source("# only a comment\n", "p.yaml").data is None


def test_billion_laughs_rejected_quickly_at_alias_line() -> None:
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"a{i}: &a{i} [{','.join(f'*a{i - 1}' for _ in range(9))}]" for i in range(1, 10)]
    start = time.perf_counter()
    exc = _err("\n".join(levels) + "\n")
    assert time.perf_counter() - start < 1.0
    assert exc.line == 1  # the first anchor already fails, before any expansion
    assert "anchors and aliases are not allowed" in exc.message


def test_alias_rejected_at_its_line() -> None:
    # A bare alias to an undefined anchor: we reject it before PyYAML even looks the anchor up.
    exc = _err("a: 1\nb: *x\n")
    assert (exc.line, str(exc)) == (2, "p.yaml:2: anchors and aliases are not allowed in policy files")


def test_anchor_alone_rejected() -> None:
    exc = _err("a: 1\nb: &base\n  c: 2\n")
    assert exc.line == 2
    assert "anchors and aliases" in exc.message


def test_merge_key_rejected() -> None:
    exc = _err("a:\n  b: 1\n  <<: {c: 2}\n")
    assert exc.line == 3
    assert "merge keys" in exc.message


def test_duplicate_key_rejected_with_line() -> None:
    exc = _err("rules:\n  - name: a\n    route: x\n    name: b\n")
    assert str(exc) == "p.yaml:4: duplicate key 'name'"


@pytest.mark.parametrize("text", ["1: a\n", "true: a\n", "null: a\n", "? [a, b]\n: c\n"])
def test_non_string_keys_rejected(text: str) -> None:
    exc = _err(text)
    assert exc.line == 1
    assert "mapping keys must be strings" in exc.message


def test_unsupported_tags_rejected() -> None:
    assert "unsupported YAML tag" in _err("a: !!python/object:os.system x\n").message
    assert "unsupported YAML tag" in _err("a: !!set {x, y}\n").message
    assert load_policy_source("a: !!str 12\nd: 2024-01-01\n", "p").data == {"a": "12", "d": "2024-01-01"}


def test_oversize_text_rejected() -> None:
    exc = _err("a: " + "x" * 100 + "\n", max_bytes=50)
    assert exc.line is None
    assert str(exc) == "p.yaml: file is larger than 50 bytes"
    assert "larger than" in _err("a: " + "é" * 30, max_bytes=50).message  # bytes, not characters


def test_too_many_nodes_rejected() -> None:
    text = "items:\n" + "".join(f"  - {i}\n" for i in range(50))
    assert len(load_policy_source(text, "p", max_nodes=60).data["items"]) == 50
    exc = _err(text, max_nodes=20)
    assert "too many YAML nodes" in exc.message
    assert exc.line == 19


def test_deep_nesting_rejected() -> None:
    assert "nesting too deep" in _err("[" * 500 + "]" * 500).message


def test_syntax_error_names_line() -> None:
    exc = _err("a: 1\nb: [1, 2\nc: 3\n")
    assert exc.line is not None and exc.line >= 2
    assert str(exc).startswith(f"p.yaml:{exc.line}: ")
    exc = _err("a: 1\n  b: 2\n")
    assert exc.line == 2


def test_multiple_documents_rejected() -> None:
    exc = _err("a: 1\n---\nb: 2\n")
    assert exc.line == 2
    assert "multiple YAML documents" in exc.message


def test_load_policy_file(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("a: 1\n", encoding="utf-8")
    assert load_policy_file(good).data == {"a": 1}
    with pytest.raises(PolicySourceError, match=r"p\.yaml: file is larger than 3 bytes"):
        load_policy_file(good, max_bytes=3)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicySourceError, match=r"nope\.yaml: cannot read policy file"):
        load_policy_file(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: \xff\n")
    with pytest.raises(PolicySourceError, match="not valid UTF-8"):
        load_policy_file(bad)


class _When(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    max_tokens: int


class _Rule(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str
    when: _When | None = None
    route: str


class _Policy(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    version: int
    rules: list[_Rule]


def test_describe_validation_error_points_at_lines() -> None:
    text = POLICY.replace("max_tokens: 100", "max_tokens: lots\n      signal: x").replace("flags: ", "# ")
    src = load_policy_source(text, "policies/x.yaml")
    with pytest.raises(pydantic.ValidationError) as info:
        _Policy.model_validate(src.data)
    lines = describe_validation_error(src, info.value).splitlines()
    assert lines == [
        "policies/x.yaml:6: rules.0.when.max_tokens: Input should be a valid integer, "
        "unable to parse string as an integer",
        "policies/x.yaml:7: rules.0.when.signal: unknown key 'signal'",
    ]


def test_describe_validation_error_missing_field_uses_parent_line() -> None:
    src = load_policy_source("version: 1\nrules:\n  - name: a\n", "p.yaml")
    with pytest.raises(pydantic.ValidationError) as info:
        _Policy.model_validate(src.data)
    assert describe_validation_error(src, info.value) == "p.yaml:3: rules.0.route: Field required"


def test_line_of_prefers_real_keys_over_union_tags_with_the_same_name() -> None:
    text = "when:\n  signal: tokens\n  gt: x\nall:\n  - signal: a\n    lt: y\n"
    src = load_policy_source(text, "p.yaml")
    assert src.line_of(("when", "signal", "gt")) == 3  # 'signal' here is a union tag, not the key
    assert src.line_of(("when", "signal", "signal")) == 2
    assert src.line_of(("all", "all", 0, "signal", "lt")) == 6
