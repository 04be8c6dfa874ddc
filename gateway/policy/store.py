"""The live policy: compiled off the request path, swapped in one step, never replaced by a broken one.

Edits arrive two ways, both through `apply`: the file changed (polled), or an admin sent a new text
(the file is then rewritten atomically). Every version that goes live is recorded in the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

from gateway.policy.compile import CompiledPolicy, PolicyError, compile_policy_text
from gateway.policy.history import PolicyHistory
from gateway.policy.signals import SignalTools

logger = logging.getLogger("gateway.policy")


class PolicyNotWritable(PolicyError):
    """The text compiled, but the policy file cannot be rewritten (a read-only mount, such as a
    Kubernetes ConfigMap): the policy is managed where that file comes from, and nothing changed."""


class PolicyStore:
    """Holds the compiled policy every request reads (`current`).

    A new version compiles on a worker thread; only a policy that compiled and passed its golden
    cases replaces `current`, by a single assignment, so a request sees the old policy or the new
    one whole. A broken edit leaves the running policy in place and is reported in `last_error`.
    """

    def __init__(
        self,
        path: Path,
        deployments: Collection[str],
        tools: SignalTools,
        history: PolicyHistory | None = None,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        # Told the policy's name each time an edit is rejected (the rejection metric).
        self._on_rejected = on_rejected
        self.name = path.stem
        self._deployments = frozenset(deployments)
        self._tools = tools
        self._history = history
        self._lock = asyncio.Lock()
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError([f"{path}: cannot read the policy: {exc}"]) from exc
        self.current: CompiledPolicy = self._compile(text)
        self._digest = _digest(text)
        self.version = history.record(self.name, text, "file") if history else 0
        self.last_error: list[str] | None = None
        self.reloads = 0

    def _compile(self, text: str) -> CompiledPolicy:
        return compile_policy_text(text, str(self.path), self._deployments, self._tools, name=self.name)

    async def check(self, text: str) -> CompiledPolicy:
        """Compile `text` as `apply` would, golden cases included, without making it live. Raises
        `PolicyError` with every problem."""
        return await asyncio.to_thread(self._compile, text)

    async def apply(self, text: str, author: str, *, write_file: bool) -> int:
        """Compile `text` and make it live; its version number. Raises `PolicyError`, changing nothing."""
        async with self._lock:
            try:
                compiled = await asyncio.to_thread(self._compile, text)
            except PolicyError as exc:
                self.last_error = exc.problems
                problems = "\n".join(exc.problems)
                logger.error("policy %s rejected, the running one stays:\n%s", self.name, problems)
                if self._on_rejected is not None:
                    self._on_rejected(self.name)
                raise
            if write_file:
                try:
                    await asyncio.to_thread(_write_atomically, self.path, text)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    raise PolicyNotWritable(
                        [
                            f"{self.path} cannot be written ({reason}): it is managed where it is mounted "
                            "from (a Kubernetes ConfigMap: edit the chart's policyFiles and upgrade), "
                            "and the running policy stays"
                        ]
                    ) from exc
            version = 0
            if self._history is not None:
                version = await asyncio.to_thread(self._history.record, self.name, text, author)
            self.current, self.version, self._digest = compiled, version, _digest(text)
            self.last_error = None
            self.reloads += 1
            rules = len(compiled.rules)
            logger.info("policy %s v%d applied by %s (%d rules)", self.name, version, author, rules)
            return version

    async def watch(self, interval: float = 1.0) -> None:
        """Apply the file whenever its content changes (polled: no platform file-watching needed)."""
        while True:
            await asyncio.sleep(interval)
            try:
                text = self.path.read_text()
            except (OSError, UnicodeDecodeError):
                continue  # being replaced, or gone: keep the running policy
            digest = _digest(text)
            if digest == self._digest:
                continue
            self._digest = digest  # a broken text is reported once, not on every poll
            with contextlib.suppress(PolicyError):  # reported in last_error and the log
                await self.apply(text, "file", write_file=False)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    """Readers (the watcher, an editor) see the old file or the new one, never half of it."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            os.unlink(handle.name)
            raise
    try:
        os.replace(handle.name, path)
    except OSError:
        os.unlink(handle.name)
        raise
