"""Revocation benchmark: PUBLISH of a revoke -> denied at every reader, next to the floor.

    python -m benchmarks.revocation_bench [--revokes 60] [--rate 1000] [--quick]

One Redis, one sandbox Wrapper, and the HTTP API stay up for the whole run. For each pipeline:
  (a) crmcache: the subscriber process and a Celery worker (prefork, 2 processes);
  (b) the floor: a plain loop in this process (PSUBSCRIBE, parse, HSET the status, bump
      meta.version, PUBLISH the change notification), no validation, no ordering;
three reader processes (``SmartCRMConsumer``, near-cache on) and this process polling the HTTP
API's ``/api/permissions/check`` each watch one probe user at a time. A revoke suspends it: the
Wrapper's data first, then a ``user-changed`` PUBLISH whose time starts the clock; the clock
stops when the last of the four readers first denies. First lone revokes (nothing else on the
tenant), then revokes while ``--rate`` cost events per second of background traffic hit the same
tenant (each bumps the version the near-caches confirm against). Readers poll every 1 ms, in
both pipelines alike; the floor runs in a process of its own. Prints measured figures only;
nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import httpx
import redis

from benchmarks.api_bench import uvicorn_server
from benchmarks.hop_trace import Monitor, hops_of, table
from benchmarks.pipeline_bench import BIN, ROOT, cpu_model, processes, wait_for
from crmcache.keyspace import DataClass, TenantKeys

TENANT = "bench"
KEYS = TenantKeys.of(TENANT)
PERMISSION = "crm.leads.create"
API_KEY = "bench-key"
POLL_S = 0.001
READERS = 3


def probe_users(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{k}" for k in range(count)]


def revoke_event(user: str) -> str:
    return json.dumps(
        {"eventType": "user-changed", "data": {"userId": user, "status": "suspended"}}
    )


def cost_event(i: int) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": "bg", "newValue": i}}
    )


# --- the readers -------------------------------------------------------------------------------


def reader_main(prefix: str, count: int) -> None:
    """A reader process: say ready once every probe is granted, then for each probe in turn
    poll until it is denied and note when; print the times as JSON at the end."""
    from consumer import SmartCRMConsumer
    from consumer.read.cache import CRMCache

    heard: list[float] = []
    if os.environ.get("CRM_BENCH_TRACE"):  # when the notification reached this process
        on_change = CRMCache.on_change

        def traced(self: CRMCache, *args: Any) -> None:
            heard.append(time.perf_counter())
            on_change(self, *args)

        CRMCache.on_change = traced  # type: ignore[method-assign]
    access_blind()
    crm = SmartCRMConsumer(TENANT)
    users = probe_users(prefix, count)
    if not wait_for(lambda: all(crm.check_permission(u, PERMISSION) for u in users), 60):
        raise SystemExit("probes never granted")
    print("ready", flush=True)
    denied = watch(users, lambda u: crm.check_permission(u, PERMISSION))
    print(json.dumps({"denied": denied, "heard": heard}), flush=True)
    crm.shutdown()


def access_blind() -> None:
    """With CRM_BENCH_ACCESS_BLIND, readers as they were before they kept users and roles on a
    change that wrote no access field: the notification's ``access`` is ignored."""
    if not os.environ.get("CRM_BENCH_ACCESS_BLIND"):
        return
    from consumer.read.near_cache import NearCache

    notify = NearCache.notify

    def blind(self: NearCache, version: int, written: int | None = None, *_: Any) -> None:
        notify(self, version, written)

    NearCache.notify = blind  # type: ignore[method-assign]


def api_app() -> Any:
    """The HTTP API's app, its readers ``access_blind`` when asked."""
    from consumer.api.app import create_app

    access_blind()
    return create_app()


def watch(users: list[str], allowed: Callable[[str], bool]) -> list[float]:
    denied_at = []
    for user in users:
        while allowed(user):
            time.sleep(POLL_S)
        denied_at.append(time.perf_counter())
    return denied_at


def api_watcher(port: int, users: list[str], out: list[float]) -> threading.Thread:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY})

    def allowed(user: str) -> bool:
        query = {"userId": user, "permission": PERMISSION}
        answer = client.get("/api/permissions/check", params=query, timeout=5)
        return bool(answer.json()["authorized"])

    def run() -> None:
        out.extend(watch(users, allowed))
        client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- the floor ---------------------------------------------------------------------------------


def plain_loop(url: str, stop: threading.Event) -> None:
    """The floor: receive, write the field, bump the version, notify."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"crm:{TENANT}:*")
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message is None or message["channel"].endswith(b":changes"):
            continue
        body = json.loads(message["data"])
        data = body["data"]
        pipe = client.pipeline(transaction=True)
        access = int(body["eventType"] == "user-changed")
        if access:
            pipe.hset(KEYS.values(DataClass.USER_STATUS), data["userId"], data["status"])
        else:
            pipe.hset(KEYS.values(DataClass.CREDIT_COSTS), data["operationCode"], data["newValue"])
        pipe.hincrby(KEYS.meta, "version", 1)
        version = pipe.execute()[-1]
        notice = {"version": version, "written": 1, "access": access}
        client.publish(KEYS.changes_channel, json.dumps(notice))
    pubsub.close()
    client.close()


# --- one run -----------------------------------------------------------------------------------


class Background:
    """``rate`` cost events per second on the tenant, from a thread."""

    def __init__(self, url: str, rate: int) -> None:
        self.client, self.rate = redis.Redis.from_url(url), rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        channel, started, i = KEYS.channel("credit-configs"), time.perf_counter(), 0
        while not self.stop.is_set():
            target = started + i / self.rate
            if (now := time.perf_counter()) < target:
                time.sleep(target - now)
            self.client.publish(channel, cost_event(i))
            i += 1

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()


def revoke_all(
    r: redis.Redis, wrapper: Any, users: list[str], interval: float, sent: list[float]
) -> None:
    channel = KEYS.channel("users")
    for user in users:
        wrapper.set_user(TENANT, user, status="suspended", publish=False)
        sent.append(time.perf_counter())
        r.publish(channel, revoke_event(user))
        time.sleep(interval)


def measure(
    r: redis.Redis, wrapper: Any, env: dict[str, str], api_port: int, prefix: str, args: Any
) -> dict[str, list[float]]:
    """Start the readers on fresh probes, revoke them (lone, then under background traffic),
    and return the latencies (ms) until the last reader denied, per phase."""
    total = 2 * args.revokes
    users = probe_users(prefix, total)
    command = [sys.executable, "-m", "benchmarks.revocation_bench", "--reader", prefix, str(total)]
    readers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(READERS)
    ]
    for proc in readers:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a reader did not start")
    api_seen: list[float] = []
    api = api_watcher(api_port, users, api_seen)
    time.sleep(0.5)
    sent: list[float] = []
    with Monitor(args.url) if args.trace else nullcontext() as monitor:
        revoke_all(r, wrapper, users[: args.revokes], args.interval, sent)
        time.sleep(0.1)
    broker = redis.Redis.from_url(env["CELERY_BROKER_URL"])
    with Background(args.url, args.rate):
        time.sleep(0.5)
        with Monitor(args.url) if args.trace else nullcontext() as loaded_monitor:
            revoke_all(r, wrapper, users[args.revokes :], args.interval, sent)
            time.sleep(0.1)
        depth = {q: broker.llen(q) for q in ("crm.events.urgent", "crm.events", "crm.events.bulk")}
    broker.close()
    print(f"  {prefix} broker queue depth at the end of the load: {depth}", file=sys.stderr)
    api.join(timeout=30)
    seen, heard = [api_seen], []
    for proc in readers:
        out, _ = proc.communicate(timeout=60)
        answer = json.loads(out.strip().splitlines()[-1])
        seen.append(answer["denied"])
        heard.append(answer["heard"])
    last = [max(times[k] for times in seen) for k in range(len(sent))]
    latencies = [(t - at) * 1000 for t, at in zip(last, sent, strict=True)]
    if monitor is not None:
        n = args.revokes
        rows = hops_of(monitor.commands, users[:n], sent[:n], last[:n], heard)
        print("\n".join(table(prefix, rows)), file=sys.stderr)
        rows = hops_of(loaded_monitor.commands, users[n:], sent[n:], last[n:], heard, True)
        print("\n".join(table(prefix, rows, f"revokes @{args.rate} ev/s")), file=sys.stderr)
    for name, times in zip(("api", *(f"reader{i}" for i in range(READERS))), seen, strict=True):
        each = [(times[k] - at) * 1000 for k, at in enumerate(sent)]
        lone, loaded = (
            statistics.median(each[: args.revokes]),
            statistics.median(each[args.revokes :]),
        )
        print(f"  {prefix} {name}: p50 lone {lone:.2f} ms, loaded {loaded:.2f} ms", file=sys.stderr)
    return {"lone": latencies[: args.revokes], "background": latencies[args.revokes :]}


def figures(name: str, phases: dict[str, list[float]], rate: int) -> list[str]:
    rows = []
    for phase, values in phases.items():
        q = (
            statistics.quantiles(values, n=100, method="inclusive")
            if len(values) > 1
            else values * 99
        )
        label = "lone revoke" if phase == "lone" else f"revoke @{rate} ev/s"
        rows.append(
            f"{name:<42} {label:<20} n={len(values):<4} p50 {q[49]:7.2f} ms  "
            f"p99 {q[98]:7.2f} ms  max {max(values):7.2f} ms"
        )
    return rows


PREFIXES = ("m", "u", "a", "p", "f")


def pipelines(args: Any, url: str) -> list[tuple[str, str, list[list[str]], dict[str, str]]]:
    """(name, probe prefix, processes, environment) of each pipeline, measured in turn: the
    pipeline as it was before the urgent lane, with it, and the floor."""

    def worker(pool: str, concurrency: int, queues: str) -> list[str]:
        return [
            str(BIN / "celery"), "-A", "tasks", "worker", f"--pool={pool}",
            f"--concurrency={concurrency}", "--without-gossip", "--without-mingle",
            "--loglevel=WARNING", "-Q", queues,
        ]  # fmt: skip

    subscriber = [str(BIN / "crmcache"), "subscribe"]
    events = "crm.events,crm.events.bulk,crm.preload"
    floor = [sys.executable, "-m", "benchmarks.revocation_bench", "--floor", url]
    blind, slow, fast = (
        {"CRM_BENCH_ACCESS_BLIND": "1"},
        {"CRM_REVOKE_FAST_PATH": "0"},
        {"CRM_REVOKE_FAST_PATH": "1"},
    )
    urgent = [
        worker("prefork", args.workers, events),
        worker("solo", 1, "crm.events.urgent"),
        subscriber,
    ]
    return [
        (
            "as before (no urgent lane, blind readers)",
            "m",
            [worker("prefork", args.workers, events), subscriber],
            {"CRM_URGENT_LANE": "0", **slow, **blind},
        ),
        ("+ urgent lane (solo worker)", "u", urgent, {**slow, **blind}),
        ("+ readers keep access on cost changes", "a", urgent, slow),
        ("+ subscriber fast path (opt-in)", "p", urgent, fast),
        ("plain loop (floor), same readers", "f", [floor], {}),
    ]


def data(count: int) -> dict[str, Any]:
    users = [
        {"userId": u, "status": "active", "roles": ["sales"]}
        for prefix in PREFIXES
        for u in probe_users(prefix, count)
    ]
    roles = [{"roleId": "sales", "roleName": "Sales", "permissions": [PERMISSION]}]
    costs = [{"operationCode": "bg", "creditCost": 0}]
    return {"tenants": {TENANT: {"users": users, "roles": roles, "creditConfigs": costs}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revokes", type=int, default=60, help="revokes per phase")
    parser.add_argument("--rate", type=int, default=1000, help="background events/s")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between revokes")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--quick", action="store_true", help="10 revokes per phase")
    parser.add_argument(
        "--trace", action="store_true", help="per-hop timestamps of the lone revokes (MONITOR)"
    )
    parser.add_argument("--pipelines", help="only these, by probe prefix (m,u,a,p,f; default: all)")
    parser.add_argument("--reader", nargs=2, metavar=("PREFIX", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--floor", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        plain_loop(args.floor, threading.Event())
        return 0
    if args.reader:
        reader_main(args.reader[0], int(args.reader[1]))
        return 0
    if args.quick:
        args.revokes = 10

    from config.settings import load_settings
    from crmcache.preload import preload_tenant
    from crmcache.store import Store
    from crmcache.wrapper import WrapperClient
    from ops.dev.redis_server import RedisServer
    from sandbox import SandboxWrapper

    rows: list[str] = []
    with (
        RedisServer() as server,
        SandboxWrapper(data(2 * args.revokes), redis_url=server.url) as wrapper,
    ):
        args.url = server.url
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
            "WRAPPER_API_URL": wrapper.url,
            "CRM_TENANTS": TENANT,
            "CRM_API_KEYS": f"{TENANT}:{API_KEY}",
            "CRM_LOG_LEVEL": "WARNING",
            **({"CRM_BENCH_TRACE": "1"} if args.trace else {}),
        }
        r = redis.Redis.from_url(server.url)
        settings = load_settings(REDIS_URL=server.url, WRAPPER_API_URL=wrapper.url)
        client = WrapperClient(settings)
        preload_tenant(Store(r), client, TENANT)
        client.close()
        for name, prefix, commands, extra in pipelines(args, server.url):
            if args.pipelines and prefix not in args.pipelines.split(","):
                continue
            app = "benchmarks.revocation_bench:api_app"
            with uvicorn_server(app, {**env, **extra}) as api_port:
                with processes(commands, {**env, **extra}):
                    if prefix != "f" and not wait_for(
                        lambda: r.publish(KEYS.channel("users"), "{}") >= 1, 30
                    ):
                        raise RuntimeError("the subscriber did not start")
                    time.sleep(1.0)
                    phases = measure(r, wrapper, {**env, **extra}, api_port, prefix, args)
                    rows += figures(name, phases, args.rate)
        r.close()
    load = os.getloadavg()
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_model()}, Python {sys.version.split()[0]}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; readers: {READERS} processes "
        f"+ the HTTP API; latency = PUBLISH -> the last of them denies"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
