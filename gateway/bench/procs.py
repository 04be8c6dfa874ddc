"""The benchmark's child processes: spawned in their own session, pinned to a core, measured from /proc.

CPU and memory are read from /proc (summed over the child's process tree, since a proxy may fork
workers) rather than psutil, which the gateway does not depend on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_SECONDS = 5.0


class ChildFailed(Exception):
    """A child process exited or never became ready; the message carries the end of its log, the
    summary (one line) what happened and the last line the child wrote."""

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message.splitlines()[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing bracket.
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15


def rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def own_cpu_seconds() -> float:
    """CPU time of the benchmark process itself: the load generator."""
    times = os.times()
    return times.user + times.system


@dataclass
class Child:
    """One spawned server; `stop` ends its whole process group."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    spawned_at: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in process_tree(self.pid))

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in process_tree(self.pid))

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ChildFailed:
        code = self.process.poll()
        state = f"exited with {code}" if code is not None else "still running"
        return ChildFailed(
            f"{self.name} {what} ({state}); its output ends:\n{self.log_tail()}",
            f"{self.name} {what} ({state}): {self.last_words()}",
        )

    def last_words(self) -> str:
        """The last non-blank line of its output (a failed start-up's reason, usually)."""
        lines = [line.strip() for line in self.log_tail(40).splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_SECONDS)
        # Workers it forked may outlive it: the group was the child's own, so end what is left of it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_SECONDS)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    cpus: set[int] | None,
    cwd: Path | None = None,
) -> Child:
    """Start `argv` in a new session with output to `log`, pinned to `cpus` right after the fork;
    in `cwd` when given (else the bench's own directory)."""
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    child = Child(name, process, log, started)
    if cpus:
        try:
            os.sched_setaffinity(process.pid, cpus)
        except OSError:
            child.stop()
            raise
    return child


async def ready_line(child: Child, prefix: str, limit: float) -> str:
    """Wait for the first log line starting with `prefix` (the fake's `READY <url>`); the rest of it."""
    try:
        async with asyncio.timeout(limit):
            while child.alive():
                with contextlib.suppress(OSError):
                    for line in child.log.read_text(errors="replace").splitlines():
                        if line.startswith(prefix):
                            return line[len(prefix) :].strip()
                await asyncio.sleep(0.01)
    except TimeoutError:
        pass
    raise child.failure("did not become ready")
