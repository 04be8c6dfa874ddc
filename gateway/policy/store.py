"""The live policy: compiled off the request path, swapped in one step, never replaced by a broken one."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Collection
from pathlib import Path

from gateway.policy.compile import CompiledPolicy, PolicyError, load_policy
from gateway.tokens import TokenCounter

logger = logging.getLogger("gateway.policy")


class PolicyStore:
    """Holds the compiled policy every request reads (`current`) and reloads it when its file changes.

    A reload compiles on a worker thread; only a policy that compiled and passed its golden cases
    replaces `current`, by a single assignment, so a request sees the old policy or the new one whole.
    A broken edit leaves the running policy in place and is reported in `last_error`.
    """

    def __init__(self, path: Path, deployments: Collection[str], tokens: TokenCounter) -> None:
        self.path = path
        self._deployments = frozenset(deployments)
        self._tokens = tokens
        self._digest = ""
        self.current: CompiledPolicy = self._compile()
        self.last_error: list[str] | None = None
        self.reloads = 0

    def _compile(self) -> CompiledPolicy:
        compiled = load_policy(self.path, self._deployments, self._tokens)
        self._digest = _digest(self.path)
        return compiled

    async def reload(self) -> bool:
        """Compile the file again; True when the new policy went live."""
        try:
            compiled = await asyncio.to_thread(load_policy, self.path, self._deployments, self._tokens)
        except PolicyError as exc:
            self.last_error = exc.problems
            logger.error("policy %s rejected, the running one stays:\n%s", self.path, "\n".join(exc.problems))
            return False
        self.current = compiled
        self.last_error = None
        self.reloads += 1
        logger.info("policy %s applied (%d rules)", self.path, len(compiled.rules))
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the file's content changes (polled: no platform file-watching needed)."""
        while True:
            await asyncio.sleep(interval)
            try:
                digest = _digest(self.path)
            except OSError:
                continue  # being replaced, or gone: keep the running policy
            if digest != self._digest:
                self._digest = digest
                await self.reload()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
