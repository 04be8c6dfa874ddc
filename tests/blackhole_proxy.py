"""A TCP proxy on loopback that can turn into a black hole: a server that accepts connections and then
never answers, as a frozen PostgreSQL or Redis does (the kernel still accepts and acknowledges bytes, so
TCP keepalives and `tcp_user_timeout` see nothing wrong; only an application's own timeout notices).

    with BlackholeProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.hang()     # no byte moves in either direction, on old and new connections
        proxy.resume()   # bytes held back flow again, as after a stall
        proxy.drop()     # every open connection is closed (an outage that cuts connections)

It runs on a thread of its own with its own event loop, so it works whatever the test's process does
(a gateway in-process on another loop, or gateway processes of their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

CHUNK = 65536


class BlackholeProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole-proxy", daemon=True)
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # Control, from any thread

    def start(self) -> BlackholeProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def hang(self) -> None:
        """From now on no byte is forwarded, either way; new connections are accepted and left silent."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Forward again, the bytes held back included."""
        self._call(self._set_flowing(True))

    def drop(self) -> None:
        """Close every connection open now (both sides); later ones are forwarded (or held) as usual."""
        self._call(self._drop())

    @property
    def hanging(self) -> bool:
        return not self._flowing.is_set()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BlackholeProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # On the proxy's loop

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accepted, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _accepted(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(client_writer)
        try:
            await self._flowing.wait()  # a connection made while hanging hears nothing, not even a refusal
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(upstream_writer)
            try:
                await asyncio.gather(
                    self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
                )
            finally:
                self._writers.discard(upstream_writer)
                _close(upstream_writer)
        finally:
            self._writers.discard(client_writer)
            _close(client_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # read just before a hang: held until resume
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _close(writer)

    async def _drop(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
