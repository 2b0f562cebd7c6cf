"""Start-up memory benchmark: the resident set (VmRSS) of a subscriber and of a reader process
once started, next to a bare ``python -c "import redis"`` process measured in the same run.

    python -m benchmarks.rss_bench [--rounds 5] [--tree DIR]

Each round starts, one after the other, against one embedded Redis (no Wrapper, no worker):

  * the baseline: a Python process that imported ``redis`` and nothing of ours;
  * the subscriber: ``python -m consumer`` (``crmcache subscribe``), measured once it holds the
    subscriber lease (it subscribed and leads);
  * a reader: ``SmartCRMConsumer("acme").initialize()`` (its near-cache warmed, the background
    thread started), measured once ``initialize`` returned.

Each process is measured from ``/proc/<pid>/status`` a settle time after it is ready, then
stopped. ``--tree DIR`` runs the processes from another checkout (``git archive <commit> | tar
-x -C DIR``: its packages come first on ``sys.path``), to compare a tree before a change with
this one on the same machine in the same minute. Prints the median and the spread of each, in
MiB; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from crmcache import keyspace
from ops.dev.redis_server import RedisServer

SETTLE_S = 1.0
READY = "rss-bench: ready"
BASELINE = f"import redis, sys, time; print({READY!r}, flush=True); time.sleep(600)"
READER = (
    "import sys, time\n"
    "from consumer import SmartCRMConsumer\n"
    "reader = SmartCRMConsumer('acme').initialize()\n"
    f"print({READY!r}, flush=True)\n"
    "time.sleep(600)\n"
)


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(args: list[str], env: dict[str, str], cwd: str, ready: object) -> float:
    """Start `args`, wait until `ready(process)` says so (30 s at most), settle, read VmRSS."""
    process = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not ready(process):  # type: ignore[operator]
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[-1][:40]!r} did not start (exit {process.poll()})")
            time.sleep(0.05)
        time.sleep(SETTLE_S)
        return vm_rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=15)


def says_ready(process: subprocess.Popen[str]) -> bool:
    assert process.stdout is not None
    return process.stdout.readline().strip() == READY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", default=".", help="the checkout to run (default: this one)")
    options = parser.parse_args()
    tree = str(Path(options.tree).resolve())
    found: dict[str, list[float]] = {"baseline": [], "subscriber": [], "reader": []}
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CRM_TENANTS": "acme",
            "PYTHONPATH": tree,
            "CRM_LOG_LEVEL": "WARNING",
        }
        env.pop("CELERY_BROKER_URL", None)

        def leads(process: subprocess.Popen[str]) -> bool:
            return bool(client.get(keyspace.LEADER))

        python = sys.executable
        for _ in range(options.rounds):
            client.flushall()
            found["baseline"].append(measure([python, "-c", BASELINE], env, tree, says_ready))
            found["subscriber"].append(measure([python, "-m", "consumer"], env, tree, leads))
            client.flushall()
            found["reader"].append(measure([python, "-c", READER], env, tree, says_ready))
        client.close()
    report(found, tree, options.rounds)


def report(found: dict[str, list[float]], tree: str, rounds: int) -> None:
    print(f"tree {tree}; python {platform.python_version()}; {rounds} rounds; load {_load()}")
    base = statistics.median(found["baseline"])
    for name, values in found.items():
        median = statistics.median(values)
        extra = "" if name == "baseline" else f"  (+{median - base:.1f} MiB over the baseline)"
        print(
            f"{name:<11} VmRSS median {median:6.1f} MiB  "
            f"[{min(values):.1f} .. {max(values):.1f}]{extra}"
        )


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
