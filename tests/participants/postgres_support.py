"""A throwaway PostgreSQL server for the PostgresStore tests: initdb into a temporary directory, `postgres` on
a free port of 127.0.0.1, stopped (by its pid) and deleted at the end of the session.

PostgreSQL refuses to run as root; when the tests run as root the server runs as `nobody`. Durability is
switched off (fsync, synchronous_commit): the data is thrown away anyway, and the tests are about
transactions and concurrency, not about power cuts.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISSING = (
    "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin nor on PATH "
    "(apt-get install -y postgresql; .ci/run does)"
)


def server_binaries() -> Path | None:
    """The bin directory of the newest PostgreSQL installed, or None."""
    candidates = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _as_server_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        nobody = pwd.getpwnam("nobody")
        return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def start(self) -> None:
        who = self._as_server_user()
        if who:
            os.chown(self.root, who["user"], who["group"])
        data, log = self.root / "data", self.root / "server.log"
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **who,
        )
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                **who,
            )
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{log.read_text()}")
            try:
                psycopg.connect(self.admin_dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self) -> str:
        """A fresh, empty database for one test; its connection string."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: ends the sessions, checkpoints
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer | None]:
    """A running server for the block, or None when PostgreSQL is not installed."""
    bin_dir = server_binaries()
    if bin_dir is None:
        yield None
        return
    # Not under pytest's basetemp: its directories are private to the user running the tests, and the
    # server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="saga-postgres-"))
    server = PostgresServer(bin_dir, root, _free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
