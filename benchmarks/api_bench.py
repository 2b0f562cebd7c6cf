"""HTTP API benchmark: requests/s and latency of the read endpoints against the framework floor.

    python -m benchmarks.api_bench [--seconds 5] [--connections 16] [--rate 1000]

Starts its own Redis, its own sandbox Wrapper and two real uvicorn processes on loopback (one
worker each): the crmcache API, and a bare FastAPI app whose one endpoint returns a constant
(the floor). The load comes from a separate process (raw asyncio sockets, keep-alive), so on a
2-core machine the server has one core and the load generator the other. Measured, one target
at a time:

  * closed loop (`--connections` clients back to back): req/s, p50, p99 for the floor, the
    API's `/api/credits/validate` and `/api/permissions/check`;
  * sync vs async: the same permission check in a plain `def` endpoint (thread pool) and in
    an `async def` one (the API's near-cache fast path), and a Redis HGET in a plain `def`
    endpoint (thread pool, redis-py) vs an `async def` one (redis.asyncio);
  * open loop at `--rate` req/s (paced, latency from the scheduled time): p50/p99/max.
Prints measured figures only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from consumer.api import fastpath
from consumer.api.auth import tenant_of

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
HEADERS = (("X-API-Key", API_KEY),)
VALIDATE = "/api/credits/validate?operation=crm.leads.create&userId=user-456"
PERMISSION = "/api/permissions/check?userId=user-456&permission=crm.leads.create"


# --- the servers (uvicorn factories) ----------------------------------------------------------


def floor_app() -> FastAPI:
    """The framework's floor: FastAPI, one async endpoint returning a constant."""
    app = FastAPI()

    @app.get("/floor")
    async def floor() -> dict[str, bool]:
        return {"ok": True}

    return app


def bench_app() -> FastAPI:
    """The crmcache API plus the variants measured for the sync-vs-async choice."""
    import redis.asyncio

    from consumer.api import create_app
    from crmcache.keyspace import DataClass, TenantKeys

    app = create_app()
    service = app.state.service
    cost_key = TenantKeys.of("acme").values(DataClass.CREDIT_COSTS)
    async_client: dict[str, Any] = {}

    @app.get("/bench/floor-in-app")
    async def floor_in_app() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/bench/permission-sync")
    def permission_sync(request: Request) -> dict[str, bool]:
        # The plain-def variant: every check makes a thread-pool hop.
        reader = service.readers.get(tenant_of(request))
        return {"authorized": reader.check_permission("user-456", "crm.leads.create")}

    @app.get("/api/bench/permission-async")
    async def permission_async(request: Request) -> dict[str, bool]:
        # What the API does: on the event loop when the near-cache answers.
        reader = await fastpath.reader_for(service.readers, tenant_of(request))
        answer = await fastpath.check_permission(reader, "user-456", "crm.leads.create")
        return {"authorized": answer.authorized}

    @app.get("/bench/cost-redis-sync")
    def cost_sync() -> dict[str, Any]:
        return {"cost": service.redis.hget(cost_key, "crm.leads.create")}

    @app.get("/bench/cost-redis-async")
    async def cost_async() -> dict[str, Any]:
        client = async_client.get("redis")
        if client is None:
            client = async_client["redis"] = redis.asyncio.Redis.from_url(
                service.settings.cache_url
            )
        return {"cost": await client.hget(cost_key, "crm.leads.create")}

    return app


# --- orchestration ----------------------------------------------------------------------------


def free_port() -> int:
    from ops.dev.redis_server import free_port as port

    return port()


@contextmanager
def uvicorn_server(factory: str, env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    target = factory if ":" in factory else f"benchmarks.api_bench:{factory}"
    command = [
        sys.executable, "-m", "uvicorn", target, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{factory} did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(spec: LoadSpec) -> LoadResult:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_load, (spec,))


def row(name: str, result: LoadResult, floor_rps: float | None = None) -> dict[str, Any]:
    return {
        "target": name,
        "rps": round(result.rps),
        "p50_ms": round(result.percentile(50), 3),
        "p99_ms": round(result.percentile(99), 3),
        "max_ms": round(max(result.latencies_ms, default=0.0), 3),
        "errors": result.errors,
        "of_floor": round(result.rps / floor_rps, 3) if floor_rps else None,
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'target':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'floor':>6} err")
    for r in rows:
        share = f"{r['of_floor']:.0%}" if r["of_floor"] is not None else "-"
        print(
            f"{r['target']:44} {r['rps']:>8} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['max_ms']:>8.3f} {share:>6} {r['errors']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.api_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per closed-loop target")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=3, help="closed-loop rounds; the median round is shown"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="paced requests per second")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from config.settings import load_settings
    from crmcache.preload import preload_tenant
    from crmcache.redis_client import make_redis
    from crmcache.store import Store
    from crmcache.wrapper import WrapperClient
    from ops.dev.redis_server import RedisServer
    from sandbox import SandboxWrapper

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
            REDIS_URL=redis_server.url, WRAPPER_API_URL=sandbox.url, WRAPPER_API_TOKEN="bench-token"
        )
        client, wrapper = make_redis(redis_server.url), WrapperClient(settings)
        preload_tenant(Store(client), wrapper, "acme")
        wrapper.close()
        client.close()

        closed: dict[str, Any] = dict(
            mode="closed", connections=args.connections, seconds=args.seconds
        )
        with (
            uvicorn_server("floor_app", env) as floor_port,
            uvicorn_server("bench_app", env) as port,
        ):
            for path in (VALIDATE, PERMISSION):  # warm: reader created, balance read through
                httpx.get(
                    f"http://127.0.0.1:{port}{path}", headers=dict(HEADERS)
                ).raise_for_status()
            targets = [
                ("floor: bare FastAPI constant", floor_port, "/floor", ()),
                ("API /api/credits/validate", port, VALIDATE, HEADERS),
                ("API /api/permissions/check", port, PERMISSION, HEADERS),
                ("constant in the API app (its middleware)", port, "/bench/floor-in-app", ()),
                ("permission check, plain def (thread pool)", port, "/api/bench/permission-sync",
                 HEADERS),
                ("permission check, async def (fast path)", port, "/api/bench/permission-async",
                 HEADERS),
                ("Redis HGET, def + redis-py (thread pool)", port, "/bench/cost-redis-sync", ()),
                ("Redis HGET, async def + redis.asyncio", port, "/bench/cost-redis-async", ()),
            ]  # fmt: skip
            # Rounds interleave the targets, so a burst of outside load hits them all alike.
            runs: dict[str, list[LoadResult]] = {name: [] for name, *_ in targets}
            for _ in range(args.rounds):
                for name, target_port, path, headers in targets:
                    spec = LoadSpec("127.0.0.1", target_port, path, headers, **closed)
                    runs[name].append(measure(spec))
            medians = {
                name: sorted(results, key=lambda res: res.rps)[len(results) // 2]
                for name, results in runs.items()
            }
            floor = medians["floor: bare FastAPI constant"]
            rows = [row(name, result, floor.rps) for name, result in medians.items()]
            paced: dict[str, Any] = dict(
                mode="paced", rate=args.rate, seconds=args.paced_seconds, connections=32
            )
            paced_rows = [
                row(
                    "floor: bare FastAPI constant",
                    measure(LoadSpec("127.0.0.1", floor_port, "/floor", **paced)),
                ),
                row(
                    "API /api/credits/validate",
                    measure(LoadSpec("127.0.0.1", port, VALIDATE, HEADERS, **paced)),
                ),
                row(
                    "API /api/permissions/check",
                    measure(LoadSpec("127.0.0.1", port, PERMISSION, HEADERS, **paced)),
                ),
            ]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print_table(
        f"closed loop, {args.connections} connections, {args.seconds:g} s each, "
        f"median of {args.rounds} rounds",
        rows,
    )
    print_table(
        f"paced {args.rate:g} req/s for {args.paced_seconds:g} s (latency from schedule)",
        paced_rows,
    )
    if args.json:
        args.json.write_text(json.dumps({"closed": rows, "paced": paced_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
