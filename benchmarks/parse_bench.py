"""Parsing benchmark: what the nesting-depth check costs the subscriber per message.

    python -m benchmarks.parse_bench [--rounds 15]

Measures, in one run, interleaved round by round (so that a load spike hits both sides):

  * the hot path: ``parse_message`` on a mix of ordinary events (the seed's minimal cost, a role
    and a user with the full envelope, a small config), with the depth check and with it
    replaced by a no-op (the baseline), and the check alone; and the worker's re-validation of
    the same events (``Event.from_task``, whose check walks the decoded data) next to its check;
  * the rare path, taken only by a message with more brackets than the limit: the check next to
    ``json.loads`` of the same 64 KB-class documents (shallow, string-heavy, deep but legal)
    and the 6 KB nesting bomb (which ``json.loads`` cannot decode: RecursionError).

Prints the median and the best round of each (microseconds per message); nothing here is a
pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from crmcache import events
from crmcache.events import Event, parse_message
from crmcache.json_bounds import exceeds_depth, tree_exceeds_depth

ENVELOPE = {"tenantId": "acme", "version": 7, "seq": 42, "occurredAt": "2026-11-26T10:00:00Z"}
HOT = [
    (
        "crm:acme:credit-configs",
        {
            "eventType": "credit-config-changed",
            "data": {"operationCode": "crm.leads.create", "newValue": 5},
        },
    ),
    (
        "crm:acme:roles",
        {
            "eventType": "role-changed",
            "eventId": "e-1",
            "data": {
                "roleId": "sales",
                "roleName": "Sales",
                "permissions": ["crm.leads.*", "crm.contacts.view"],
            },
            **ENVELOPE,
        },
    ),
    (
        "crm:acme:users",
        {
            "eventType": "user-changed",
            "eventId": "e-2",
            "data": {"userId": "u-1", "status": "active", "roles": ["sales"]},
            **ENVELOPE,
        },
    ),
    (
        "crm:acme:configs",
        {
            "eventType": "config-changed",
            "data": {"configId": "c1", "config": {"flags": {"beta": True}, "limits": [1, 2]}},
        },
    ),
]
RARE = {
    "64 KB shallow ([[0],[1],...])": json.dumps([[i] for i in range(8000)]),
    "64 KB of bracket-filled strings": json.dumps([["[[[[", "{{{{"]] * 3500),
    "64 KB, objects 3 deep": json.dumps([{"a": i, "b": [i, {"c": "x"}]} for i in range(1900)]),
    "60 KB, 1,000 arrays 32 deep": "[" + ",".join(["[" * 30 + "]" * 30] * 1000) + "]",
    "6 KB nesting bomb": "[" * 3000 + "]" * 3000,
}


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def parse_hot(messages: list[tuple[str, bytes]]) -> None:
    for channel, payload in messages:
        parse_message(channel, payload)


def from_tasks(bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        Event.from_task("acme", body)


def decode_or_fail(text: str) -> None:
    try:
        json.loads(text)
    except RecursionError:
        pass


def measure(rounds: int) -> dict[str, list[float]]:
    messages = [(channel, json.dumps(body).encode()) for channel, body in HOT]
    texts = [payload.decode() for _, payload in messages]
    bodies = [parse_message(channel, payload).to_task() for channel, payload in messages]
    data = [body["d"] for body in bodies]
    n = len(messages)
    samples: dict[str, list[float]] = {}

    def sample(name: str, fn: Callable[[], object], calls: int, per: int = 1) -> None:
        samples.setdefault(name, []).append(per_call_us(fn, calls) / per)

    for _ in range(rounds):
        sample("parse_message, with the depth check", lambda: parse_hot(messages), 5000, n)
        with mock.patch.object(events, "exceeds_depth", lambda text, limit: False):
            sample("parse_message, check replaced by a no-op", lambda: parse_hot(messages), 5000, n)
        sample("the depth check alone", lambda: [exceeds_depth(t, 32) for t in texts], 5000, n)
        sample("Event.from_task (the worker's check)", lambda: from_tasks(bodies), 5000, n)
        sample("its depth check alone", lambda: [tree_exceeds_depth(d, 31) for d in data], 5000, n)
        for name, text in RARE.items():
            sample(f"{name}: depth check", lambda text=text: exceeds_depth(text, 32), 10)
            sample(f"{name}: json.loads", lambda text=text: decode_or_fail(text), 10)
    return samples


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    samples = measure(args.rounds)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; {args.rounds} rounds"
    )
    width = max(map(len, samples))
    print(f"{'':{width}}  {'median us':>10}  {'best us':>10}")
    for name, values in samples.items():
        print(f"{name:{width}}  {statistics.median(values):10.2f}  {min(values):10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
