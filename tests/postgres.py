"""A PostgreSQL server for the tests, started the way the harness starts Redis.

In order of preference:

1. ``CRM_TEST_POSTGRES_URL`` (a server someone gives us): a throwaway database is made on it.
2. Our own server: ``initdb`` into a temporary directory, a free port on 127.0.0.1, its unix
   socket in that directory, fsync off; removed with everything in it at the end. PostgreSQL
   refuses to run as root, so as root the server runs as the ``postgres`` user (the
   directory is handed to it). Binaries: ``initdb`` on PATH, else the newest
   /usr/lib/postgresql/<version>/bin.
3. A server already answering on 127.0.0.1:5432 with trust authentication: a throwaway
   database on it (said so in the report).

``CRM_TEST_POSTGRES_REPORT`` names a file that gets one line saying which of these ran (or
that none did); ``.ci/run`` prints it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ops.dev.redis_server import free_port

FALLBACK_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresUnavailable(Exception):
    """No PostgreSQL could be started or reached."""


def report(line: str) -> None:
    path = os.environ.get("CRM_TEST_POSTGRES_REPORT")
    if path:
        with Path(path).open("a") as out:
            out.write(line + "\n")


def bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not versions:
        raise PostgresUnavailable("no initdb on PATH nor in /usr/lib/postgresql/*/bin")
    return Path(versions[-1]).parent


class PostgresServer:
    """Our own throwaway server; ``restart()`` stops it (fast shutdown) and starts it again
    on the same port and data."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="crmcache-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        if not self.data.exists():
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
                + ["--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                check=True,
                capture_output=True,
                timeout=120,
                **self._as,
            )
        self._spawn()
        return self

    def _spawn(self) -> None:
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"]
        for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            args += ["-c", setting]
        args += ["-c", "max_connections=300"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise PostgresUnavailable(f"postgres did not answer: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self._spawn()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayDatabase:
    """A database of its own on a server (given, ours, or the machine's), dropped at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"crmcache_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (psycopg 3 driver) of the database."""
        base, _, _ = self.server_url.rpartition("/")
        scheme, rest = base.split("://", 1)
        return f"postgresql+psycopg://{rest}/{self.name}"

    def drop(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


def start() -> tuple[ThrowawayDatabase, PostgresServer | None, str]:
    """A throwaway database, the server we started for it (None if not ours), and how."""
    given = os.environ.get("CRM_TEST_POSTGRES_URL")
    if given:
        return ThrowawayDatabase(given), None, "CRM_TEST_POSTGRES_URL"
    problems = []
    try:
        server = PostgresServer().start()
        return ThrowawayDatabase(server.url), server, f"own server (initdb, port {server.port})"
    except (PostgresUnavailable, OSError, subprocess.SubprocessError, KeyError) as exc:
        problems.append(f"own server: {exc}")
    try:
        database = ThrowawayDatabase(FALLBACK_URL)
        return database, None, "fallback: a throwaway database on 127.0.0.1:5432"
    except psycopg.Error as exc:
        problems.append(f"127.0.0.1:5432: {exc}")
    raise PostgresUnavailable("; ".join(problems))
