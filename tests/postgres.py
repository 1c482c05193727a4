"""PostgreSQL for tests: a fresh database on the machine's server, or a private server.

    with fresh_database() as url:            # CREATE DATABASE on 127.0.0.1:5432, dropped after
        ...
    server = PostgresServer().start()        # initdb + pg_ctl on a free port (fault tests)
    server.url(); server.stop(); server.start(); server.destroy()

The private server runs as the `postgres` user when the tests run as root
(PostgreSQL refuses to run as root), with its data and socket in a
temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.conftest import service_missing
from tests.harness import free_port

ADMIN_URL = os.environ.get("BOOKBAG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _bin() -> Path:
    """The newest installed PostgreSQL's binaries (Debian layout), or BOOKBAG_TEST_POSTGRES_BIN."""
    if os.environ.get("BOOKBAG_TEST_POSTGRES_BIN"):
        return Path(os.environ["BOOKBAG_TEST_POSTGRES_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def fresh_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new, empty database (its URL); dropped afterwards, connections and all."""
    name = "bookbag_test_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        service_missing(f"PostgreSQL at {admin_url}")
    try:
        yield _with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresServer:
    """A private PostgreSQL on a free loopback port, to stop and start under a test."""

    def __init__(self) -> None:
        if not (BIN / "initdb").exists():
            service_missing(f"PostgreSQL binaries in {BIN}")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bookbag-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")

    def start(self) -> PostgresServer:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=100")
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                  "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        subprocess.run(
            (["runuser", "-u", "postgres", "--"] if self._as_postgres else [])
            + [str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60, check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
