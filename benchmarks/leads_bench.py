"""Leads benchmark: POST /api/leads per second and its latency, with SQLite and with
PostgreSQL, next to the bare deduction (the same checks and one Redis charge, no database).

    python -m benchmarks.leads_bench [--seconds 5] [--connections 16] [--rounds 3]

Starts its own Redis, sandbox Wrapper and PostgreSQL (``ops/dev/postgres_server.py``), and two
API processes on loopback (uvicorn, one worker each): one with a SQLite file, one with the
PostgreSQL server. A lead is reserve (Redis) + INSERT + commit (Redis) + the charged flag
(UPDATE); the baseline endpoint ``POST /api/bench/deduct``, mounted in the same app, does the
lead route's cost and permission checks and one ``credits.deduct`` (one Lua step). The load
comes from a separate process (raw asyncio sockets, keep-alive, every request with its own
Idempotency-Key), in a closed loop; the targets are interleaved round by round so that
outside load hits them alike. The load average before and after is printed with the figures.
Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from benchmarks.api_bench import print_table, row, uvicorn_server
from benchmarks.loadgen import LoadResult

API_KEY = "bench-key"
CL = b"content-length:"
BODY = json.dumps({"userId": "user-456", "leadData": {"name": "Bench Lead"}}).encode()


def bench_app() -> FastAPI:
    """The API plus the baseline: the same checks as a lead, one atomic deduction, no database."""
    from consumer.api import create_app
    from consumer.api.auth import tenant_of
    from crmcache import credits
    from crmcache.leads import LEAD_OPERATION

    app = create_app()
    service = app.state.service

    @app.post("/api/bench/deduct", status_code=201)
    def deduct(request: Request) -> dict[str, Any]:
        tenant = tenant_of(request)
        reader = service.readers.get(tenant)
        cost = reader.get_credit_cost(LEAD_OPERATION)
        assert cost is not None and reader.check_permission("user-456", LEAD_OPERATION)
        done = credits.deduct(
            service.store,
            service.wrapper,
            tenant,
            user_id="user-456",
            operation=LEAD_OPERATION,
            amount=cost,
            idempotency_key=request.headers["Idempotency-Key"],
            ttl_s=service.settings.idempotency_ttl,
        )
        if done.settle_now:
            service.settle_soon(tenant)
        return {"remainingCredits": done.remaining}

    return app


# --- load: POSTs with a new Idempotency-Key each -----------------------------------------------


def _post(port: int, path: str, key: str) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: keep-alive",
        f"X-API-Key: {API_KEY}",
        f"Idempotency-Key: {key}",
        "Content-Type: application/json",
        f"Content-Length: {len(BODY)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + BODY


async def _closed(port: int, path: str, connections: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    errors = count = 0
    prefix, serial = uuid.uuid4().hex[:8], itertools.count()
    measure_from = time.perf_counter() + 1.0  # warm-up second not counted
    stop = measure_from + seconds

    async def client() -> None:
        nonlocal errors, count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (t0 := time.perf_counter()) < stop:
                writer.write(_post(port, path, f"{prefix}-{next(serial)}"))
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next((int(h[15:]) for h in lines if h[:15].lower() == CL), 0)
                await reader.readexactly(length)
                if t0 >= measure_from:
                    count += 1
                    latencies.append((time.perf_counter() - t0) * 1000)
                    errors += head[9:12] != b"201"
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return LoadResult(count, errors, seconds, latencies)


def run_posts(port: int, path: str, connections: int, seconds: float) -> LoadResult:
    return asyncio.run(_closed(port, path, connections, seconds))


def measure(port: int, path: str, connections: int, seconds: float) -> LoadResult:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_posts, (port, path, connections, seconds))


# --- orchestration ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.leads_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per target and round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="the median round is shown")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from config.settings import load_settings
    from crmcache.keyspace import TenantKeys
    from crmcache.preload import preload_tenant
    from crmcache.redis_client import make_redis
    from crmcache.store import Store
    from crmcache.wrapper import WrapperClient
    from ops.dev.postgres_server import PostgresServer
    from ops.dev.redis_server import RedisServer
    from sandbox import SandboxWrapper

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="crmcache-leads-bench-"))
    postgres = PostgresServer().start()
    try:
        with (
            RedisServer() as redis_server,
            SandboxWrapper(redis_url=redis_server.url, token="bench-token") as sandbox,
        ):
            env = {
                **os.environ,
                "REDIS_URL": redis_server.url,
                "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/1",
                "WRAPPER_API_URL": sandbox.url,
                "WRAPPER_API_TOKEN": "bench-token",
                "CRM_API_KEYS": f"acme:{API_KEY}",
                "CRM_LOG_LEVEL": "WARNING",
            }
            settings = load_settings(
                REDIS_URL=redis_server.url,
                WRAPPER_API_URL=sandbox.url,
                WRAPPER_API_TOKEN="bench-token",
            )
            client, wrapper = make_redis(redis_server.url), WrapperClient(settings)
            preload_tenant(Store(client), wrapper, "acme")
            client.set(TenantKeys.of("acme").balance("user-456"), "1000000000")
            wrapper.close()
            client.close()
            sqlite_env = {**env, "CRM_DATABASE_URL": f"sqlite:///{workdir}/leads.sqlite3"}
            pg_url = postgres.url.replace("postgresql://", "postgresql+psycopg://", 1)
            pg_env = {**env, "CRM_DATABASE_URL": pg_url}
            with (
                uvicorn_server_of(sqlite_env) as sqlite_port,
                uvicorn_server_of(pg_env) as pg_port,
            ):
                targets = [
                    ("bare deduction (no database), PostgreSQL app", pg_port, "/api/bench/deduct"),
                    ("POST /api/leads, PostgreSQL", pg_port, "/api/leads"),
                    ("bare deduction (no database), SQLite app", sqlite_port, "/api/bench/deduct"),
                    ("POST /api/leads, SQLite (WAL)", sqlite_port, "/api/leads"),
                ]
                runs: dict[str, list[LoadResult]] = {name: [] for name, *_ in targets}
                for _ in range(args.rounds):
                    for name, port, path in targets:
                        runs[name].append(measure(port, path, args.connections, args.seconds))
    finally:
        postgres.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    medians = {n: sorted(rs, key=lambda r: r.rps)[len(rs) // 2] for n, rs in runs.items()}
    baseline = medians[targets[0][0]].rps
    rows = [row(name, result, baseline) for name, result in medians.items()]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f} (1 min)"
    )
    print_table(
        f"closed loop, {args.connections} connections, {args.seconds:g} s each, median of "
        f"{args.rounds} rounds ('floor' column: share of the PostgreSQL app's bare deduction)",
        rows,
    )
    if args.json:
        args.json.write_text(json.dumps({"closed": rows, "load": [load_before, load_after]}))
    return 0


def uvicorn_server_of(env: dict[str, str]) -> Any:
    """An API process (with the baseline endpoint) whose settings come from `env`."""
    return uvicorn_server("benchmarks.leads_bench:bench_app", env)


if __name__ == "__main__":
    sys.exit(main())
