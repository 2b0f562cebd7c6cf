"""A PostgreSQL server for the tests, started the way the harness starts Redis.

In order of preference:

1. ``CRM_TEST_POSTGRES_URL`` (a server someone gives us): a throwaway database is made on it.
2. Our own server (``ops/dev/postgres_server.py``: ``initdb`` into a temporary directory, a
   free port, nothing left behind; as root it runs as the ``postgres`` user).
3. A server already answering on 127.0.0.1:5432 with trust authentication: a throwaway
   database on it (said so in the report).

``CRM_TEST_POSTGRES_REPORT`` names a file that gets one line saying which of these ran (or
that none did); ``.ci/run`` prints it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from ops.dev.postgres_server import PostgresServer, PostgresUnavailable

__all__ = ["PostgresServer", "PostgresUnavailable", "ThrowawayDatabase", "report", "start"]

FALLBACK_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def report(line: str) -> None:
    path = os.environ.get("CRM_TEST_POSTGRES_REPORT")
    if path:
        with Path(path).open("a") as out:
            out.write(line + "\n")


class ThrowawayDatabase:
    """A database of its own on a server (given, ours, or the machine's), dropped at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
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
