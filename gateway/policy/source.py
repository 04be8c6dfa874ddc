"""The safe YAML front door for routing-policy files.

Policy files come from operators and admin uploads, so they are parsed defensively: composition only
(never a full Loader), no anchors or aliases (the billion-laughs vector, and never needed in a policy),
bounded size, node count and depth, no duplicate or non-string keys. Every node's line is recorded so
that any later error, including a pydantic ValidationError, can name the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent, StreamEndEvent

__all__ = [
    "PolicySource",
    "PolicySourceError",
    "describe_validation_error",
    "load_policy_file",
    "load_policy_source",
]

Loc = tuple[str | int, ...]

_MAX_DEPTH = 64  # far beyond any sane policy, well inside Python's recursion limit
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str"))


class PolicySourceError(ValueError):
    """Raised for unreadable or invalid YAML; str(exc) is 'PATH:LINE: message' (LINE omitted if unknown)."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Plain parsed data plus where each node came from, so validation errors can point at lines."""

    path: str
    data: Any
    lines: Mapping[Loc, int]

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """Line of the deepest known prefix of `loc`.

        pydantic locs may go deeper than the YAML (a missing field) or carry union tags that may or may
        not also be YAML keys (a `signal` tag over a `{signal: ..}` mapping), so every way of skipping
        loc elements is tried; the longest known path wins, ties going to the one using later elements.
        """
        reached: dict[Loc, int] = {(): -1}
        for index, part in enumerate(loc):
            for path in list(reached):
                if (*path, part) in self.lines:
                    reached[(*path, part)] = index
        known = [path for path in reached if path in self.lines]
        if not known:
            return None
        return self.lines[max(known, key=lambda path: (len(path), reached[path]))]


class _Reject(Exception):
    """Internal: a problem found while composing, carrying the offending mark."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and bounds node count and depth while composing.

    Checking here, before any graph is built, makes an alias bomb fail at its first alias.
    """

    max_nodes: int = 100_000
    node_count: int = 0
    depth: int = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent) or (
            isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None
        ):
            raise _Reject(event.start_mark, "anchors and aliases are not allowed in policy files")
        self.node_count += 1
        if self.node_count > self.max_nodes:
            raise _Reject(event.start_mark, f"too many YAML nodes (limit {self.max_nodes})")
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Reject(event.start_mark, f"nesting too deep (limit {_MAX_DEPTH})")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _build(loader: _PolicyLoader, node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> Any:
    """Turn a composed node into plain Python, recording lines. Values are keyed by their key's line."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _TAG + "timestamp":
            return node.value  # keep dates as text: policy data is plain JSON-like values
        if node.tag not in _SCALAR_TAGS:
            raise _Reject(node.start_mark, f"unsupported YAML tag {node.tag!r}")
        return loader.construct_object(node)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _TAG + "seq":
            raise _Reject(node.start_mark, f"unsupported YAML tag {node.tag!r}")
        items: list[Any] = []
        for i, child in enumerate(node.value):
            lines[(*loc, i)] = _line(child)
            items.append(_build(loader, child, (*loc, i), lines))
        return items
    if isinstance(node, yaml.MappingNode):
        if node.tag != _TAG + "map":
            raise _Reject(node.start_mark, f"unsupported YAML tag {node.tag!r}")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                raise _Reject(key_node.start_mark, "merge keys ('<<') are not allowed in policy files")
            key = _build(loader, key_node, loc, lines) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = repr(key) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                raise _Reject(key_node.start_mark, f"mapping keys must be strings, got {shown}")
            if key in out:
                raise _Reject(key_node.start_mark, f"duplicate key {key!r}")
            lines[(*loc, key)] = _line(key_node)
            out[key] = _build(loader, value_node, (*loc, key), lines)
        return out
    raise _Reject(node.start_mark, f"unexpected YAML node {type(node).__name__}")  # pragma: no cover


def load_policy_source(
    text: str, path: str, *, max_bytes: int = 1_000_000, max_nodes: int = 100_000
) -> PolicySource:
    """Parse policy YAML safely. Empty text gives data None; the caller decides whether that is allowed."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise PolicySourceError(path, None, f"file is larger than {max_bytes} bytes")
    loader = _PolicyLoader(text)
    loader.max_nodes = max_nodes
    lines: dict[Loc, int] = {}
    try:
        # yaml.compose() == get_single_node(); spelled out to own the loader and the multi-document error.
        loader.get_event()  # type: ignore[no-untyped-call]  # StreamStart
        node = None if loader.check_event(StreamEndEvent) else loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            extra = loader.get_event()  # type: ignore[no-untyped-call]
            raise _Reject(extra.start_mark, "multiple YAML documents are not allowed in a policy file")
        data = None
        if node is not None:
            lines[()] = _line(node)
            data = _build(loader, node, (), lines)
    except _Reject as exc:
        raise PolicySourceError(path, exc.mark.line + 1 if exc.mark else None, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise PolicySourceError(path, mark.line + 1 if mark else None, message) from None
    except yaml.YAMLError as exc:  # e.g. ReaderError for control characters
        raise PolicySourceError(path, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return PolicySource(path=path, data=data, lines=lines)


def load_policy_file(file: Path, *, max_bytes: int = 1_000_000, max_nodes: int = 100_000) -> PolicySource:
    """Read and parse a policy file, reading at most max_bytes + 1 so a huge file costs nothing."""
    path = str(file)
    try:
        with file.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise PolicySourceError(path, None, f"cannot read policy file: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise PolicySourceError(path, None, f"file is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicySourceError(path, None, f"not valid UTF-8 (byte offset {exc.start})") from None
    return load_policy_source(text, path, max_bytes=max_bytes, max_nodes=max_nodes)


def describe_validation_error(source: PolicySource, error: pydantic.ValidationError) -> str:
    """One 'PATH:LINE: field.path: message' line per pydantic error, pointing back into the YAML."""
    out: list[str] = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        line = source.line_of(loc)
        where = f"{source.path}:{line}" if line is not None else source.path
        field = ".".join(str(p) for p in loc) or "(top level)"
        message = f"unknown key {loc[-1]!r}" if err["type"] == "extra_forbidden" and loc else err["msg"]
        out.append(f"{where}: {field}: {message}")
    return "\n".join(out)
