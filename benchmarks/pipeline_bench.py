"""Event pipeline benchmark: PUBLISH -> visible in the cache, side by side on one Redis.

    python -m benchmarks.pipeline_bench [--events 20000] [--rate 1000] [--seconds 5]

Runs, one after the other on the same Redis server and the same machine:
  (a) crmcache: subscriber process + a Celery worker (prefork, 2 processes), micro-batches;
  (b) one Celery task per event: the same processes with CRM_BATCH_SIZE=1;
  (c) the floor: a plain subscriber loop writing Redis directly (HSET + PUBLISH per message).
For each it measures throughput (a burst of N events published as fast as Redis takes them,
until the last one is visible) and propagation latency p50/p99 at a paced rate. An event is
"visible" when the cache holds its value or a newer one (the probe field only moves forward).
Prints measured figures only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from crmcache.keyspace import META_READY, DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper

TENANT = "bench"
KEYS = TenantKeys.of(TENANT)
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def event(op: str, value: int) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": op, "newValue": value}}
    )


@contextmanager
def processes(commands: list[list[str]], env: dict[str, str]) -> Iterator[None]:
    logs = tempfile.mkdtemp(prefix="crmcache-bench-")
    procs = []
    for i, command in enumerate(commands):
        log = open(Path(logs) / f"{i}.log", "wb")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    try:
        yield
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # warm shutdown: the main process only
        for proc, log in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def plain_subscriber(url: str, stop: threading.Event) -> None:
    """The floor: receive, write the field directly, notify. No validation, no ordering."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("crm:*:credit-configs")
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message is None:
            continue
        body = json.loads(message["data"])
        pipe = client.pipeline(transaction=False)
        pipe.hset(
            KEYS.values(DataClass.CREDIT_COSTS),
            body["data"]["operationCode"],
            json.dumps(body["data"]["newValue"]),
        )
        pipe.publish(KEYS.changes_channel, "1")
        pipe.execute()
    pubsub.close()
    client.close()


class Prober:
    """Watches the tenant's change notifications and records when each probe value showed."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(KEYS.changes_channel)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            if self._pubsub.get_message(timeout=0.1) is None:
                continue
            value = self.client.hget(KEYS.values(DataClass.CREDIT_COSTS), "probe")
            now = time.perf_counter()
            if value is not None and int(value) > last:
                last = int(value)
                self.seen.append((now, last))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()
        self.client.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def wait_listening(r: redis.Redis, resync: bool = True) -> None:
    """Until the subscriber listens and (``resync``) its start-up resync is done: a snapshot
    that began during the burst would remove the burst's costs (the Wrapper has none of them),
    and the burst would never be seen whole (on a loaded machine the resync can take seconds)."""
    channel = KEYS.channel("credit-configs")
    if not wait_for(lambda: r.publish(channel, event("warmup", 0)) >= 1, 30):
        raise RuntimeError("nothing subscribed")
    if resync and not wait_for(lambda: r.hget(KEYS.meta, META_READY) is not None, 60):
        raise RuntimeError("the start-up resync did not finish")
    time.sleep(0.5)


def burst(r: redis.Redis, count: int, timeout: float) -> float | None:
    """Publish `count` events as fast as possible; events/s until the last is visible."""
    r.delete(KEYS.values(DataClass.CREDIT_COSTS))
    channel = KEYS.channel("credit-configs")
    started = time.perf_counter()
    for start in range(0, count, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 500, count)):
            pipe.publish(channel, event(f"op{i}", i))
        pipe.execute()
    done = wait_for(lambda: r.hlen(KEYS.values(DataClass.CREDIT_COSTS)) >= count, timeout)
    return count / (time.perf_counter() - started) if done else None


def paced(r: redis.Redis, url: str, rate: int, seconds: float) -> tuple[float, float, int]:
    """Publish at `rate`/s for `seconds`; propagation latency p50/p99 in ms, and lost count."""
    prober = Prober(url)
    channel = KEYS.channel("credit-configs")
    count = int(rate * seconds)
    sent: list[float] = []
    started = time.perf_counter()
    for i in range(count):
        target = started + i / rate
        while (now := time.perf_counter()) < target:
            time.sleep(max(0.0, target - now - 0.0002))
        sent.append(time.perf_counter())
        r.publish(channel, event("probe", i))
    wait_for(lambda: bool(prober.seen) and prober.seen[-1][1] >= count - 1, 15)
    prober.close()
    latencies, j = [], 0
    for i, at in enumerate(sent):
        while j < len(prober.seen) and prober.seen[j][1] < i:
            j += 1
        if j < len(prober.seen):
            latencies.append((prober.seen[j][0] - at) * 1000)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49], q[98], count - len(latencies)


def run(
    name: str, r: redis.Redis, url: str, args: argparse.Namespace, events: int
) -> dict[str, str]:
    rate = burst(r, events, timeout=max(60.0, events / 300))
    p50, p99, lost = paced(r, url, args.rate, args.seconds)
    return {
        "pipeline": name,
        "events": str(events),
        "events/s": f"{rate:,.0f}" if rate else "timeout",
        f"p50 ms @{args.rate}/s": f"{p50:.2f}",
        f"p99 ms @{args.rate}/s": f"{p99:.2f}",
        "unseen": str(lost),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="burst size (a) and (c)")
    parser.add_argument("--per-event-events", type=int, default=3_000, help="burst size (b)")
    parser.add_argument("--rate", type=int, default=1000, help="paced rate, events/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced duration")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    args = parser.parse_args()

    rows = []
    with (
        RedisServer() as server,
        SandboxWrapper({"tenants": {TENANT: {}}}, redis_url=server.url) as wrapper,
    ):
        r = redis.Redis.from_url(server.url)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
            "WRAPPER_API_URL": wrapper.url,
            "CRM_TENANTS": TENANT,
            "CRM_LOG_LEVEL": "WARNING",
        }
        worker = [
            str(BIN / "celery"),
            "-A",
            "tasks",
            "worker",
            "--pool=prefork",
            f"--concurrency={args.workers}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
            "-Q",
            "crm.events,crm.events.bulk,crm.preload",
        ]
        subscriber = [str(BIN / "crmcache"), "subscribe"]
        for name, batch, events in (
            ("crmcache (micro-batches)", "100", args.events),
            ("one Celery task per event", "1", args.per_event_events),
        ):
            # The baseline runs with lanes off, or a bulk tenant's batches would grow past 1.
            lanes = "1" if batch != "1" else "0"
            batch_env = {**env, "CRM_BATCH_SIZE": batch, "CRM_EVENT_LANES": lanes}
            with processes([worker, subscriber], batch_env):
                wait_listening(r)
                rows.append(run(name, r, server.url, args, events))
            r.flushall()
        stop = threading.Event()
        floor = threading.Thread(target=plain_subscriber, args=(server.url, stop), daemon=True)
        floor.start()
        wait_listening(r, resync=False)
        rows.append(run("plain subscriber loop (floor)", r, server.url, args, args.events))
        stop.set()
        floor.join()
        r.close()

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}, Redis on loopback"
    )
    headers = list(rows[0])
    widths = [max(len(h), *(len(row[h]) for row in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(headers, widths, strict=True)))
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
