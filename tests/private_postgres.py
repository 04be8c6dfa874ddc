"""A throwaway PostgreSQL server of the test's own, for tests that must stop and restart the database
(an outage) without disturbing the shared one on port 5432.

Plain functions and a context manager, no pytest plugin: `with private_postgres() as pg:` gives a
running server on a free loopback port (user `postgres`, trust auth, database `postgres`) that
`pg.stop()` and `pg.start()` take down and bring back; it is stopped and its files deleted at the end.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` OS user, in a
temporary directory it owns (pytest's tmp_path is not reachable for that user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30
OS_USER_UNDER_ROOT = "postgres"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def server_binaries() -> Path:
    """The directory holding initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    for directory in reversed(versions):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    raise PostgresMissing(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: "
        "install the postgresql package to run this test"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class PrivatePostgres:
    binaries: Path
    root: Path
    port: int
    # The OS user the server runs as (None: whoever runs the tests).
    os_user: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = START_TIMEOUT) -> None:
        done = subprocess.run(
            command,
            user=self.os_user,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{log}"
            )

    def initdb(self) -> None:
        self._run(
            str(self.binaries / "initdb"),
            "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale",
            "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        # -l: the server must not inherit our pipes, or waiting for pg_ctl would wait for the server.
        self._run(
            str(self.binaries / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT), "-D", str(self.data_dir),
            "-l", str(self.log_file), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server now: open connections are cut, as in a real outage."""
        self._run(str(self.binaries / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data_dir))

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh, running PostgreSQL server; stopped and deleted afterwards."""
    binaries = server_binaries()
    os_user = OS_USER_UNDER_ROOT if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="gateway-pg-") as directory:
        root = Path(directory)
        (root / "socket").mkdir()
        if os_user is not None:
            owner = pwd.getpwnam(os_user)
            for path in (root, root / "socket"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        server = PrivatePostgres(binaries, root, free_port(), os_user)
        server.initdb()
        server.start()
        try:
            yield server
        finally:
            if server.running():
                server.stop()
