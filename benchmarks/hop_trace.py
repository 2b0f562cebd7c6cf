"""Where a revoke's milliseconds go: per-hop timestamps for ``revocation_bench --trace``.

Benchmark-only (nothing in the product pays for it): Redis's ``MONITOR`` stamps every command
each process sends, with one clock, so the hops that touch Redis are read off it:

    PUBLISH crm:<t>:users ............ the revoke is published (the clock starts)
    INCRBY crm:{t}:seq ............... the subscriber flushes its batch (stamps reserved)
    LPUSH <events queue> ............. the task is in the broker (send_task done)
    ZADD unacked_index ............... the worker's consumer took it (acks_late bookkeeping)
    EVALSHA apply_events ............. the Lua runs: in the pool process (the task started), or
                                       first in the subscriber (the fast path)
    PUBLISH crm:{t}:changes (lua) .... the change notification (the Lua is done)
    EVALSHA read_access <user> ....... the last reader's refetch

plus, from the reader processes themselves, when each *heard* the notification (their
``CRMCache.on_change``, wrapped in the benchmark's reader only) and when each denied. MONITOR
costs Redis a little per command, and its parsing thread shares this process with the
background publisher and the HTTP API's poller: the headline figures of a ``--trace`` run are
not the ones to quote, and its table under load (where only the hops that name the revoked user
can be told apart from other batches') is indicative at best.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

LUA = Path(__file__).resolve().parent.parent / "crmcache" / "lua"
CLOCK_OFFSET = time.time() - time.perf_counter()
"""MONITOR stamps wall-clock time; the benchmark's processes share perf_counter (Linux's
CLOCK_MONOTONIC is one clock for every process)."""


def sha_of(script: str) -> str:
    return hashlib.sha1((LUA / f"{script}.lua").read_bytes()).hexdigest()


@dataclass
class Command:
    at: float
    """perf_counter time"""
    client: str
    words: list[str]


@dataclass
class Monitor:
    """Every command Redis runs, while on, with its time."""

    url: str
    commands: list[Command] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Monitor:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def _run(self, ready: threading.Event) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as monitor:
            ready.set()
            while not self._stop.is_set():
                cmd = monitor.next_command()
                words = [w.strip('"') for w in cmd["command"].split(" ")]
                at = cmd["time"] - CLOCK_OFFSET
                self.commands.append(
                    Command(at, f"{cmd['client_address']}:{cmd['client_port']}", words)
                )
        client.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        poke = redis.Redis.from_url(self.url)
        poke.ping()  # MONITOR's next line wakes the thread
        poke.close()
        if self._thread is not None:
            self._thread.join(5)


HOPS = (
    ("published", "PUBLISH of the revoke"),
    ("stamped", "subscriber flush (INCRBY stamps)"),
    ("enqueued", "send_task done (LPUSH)"),
    ("fetched", "worker consumer took it (ZADD unacked)"),
    ("lua", "apply_events.lua runs (first time)"),
    ("notified", "change notification PUBLISHed"),
    ("heard", "last reader process heard it"),
    ("refetched", "last reader refetch (read_access)"),
    ("denied", "last of the 4 readers denies"),
)


def _first(commands: list[Command], after: float, until: float, match: Any) -> float | None:
    for cmd in commands:
        if after <= cmd.at <= until and match(cmd.words):
            return cmd.at
    return None


def _last(commands: list[Command], after: float, until: float, match: Any) -> float | None:
    found = [c.at for c in commands if after <= c.at <= until and match(c.words)]
    return max(found) if found else None


def hops_of(
    commands: list[Command],
    users: list[str],
    sent: list[float],
    denied: list[float],
    heard: list[list[float]],
    loaded: bool = False,
) -> list[dict[str, float]]:
    """Per revoke, the time (ms after its PUBLISH) each hop was reached; missing hops (the
    floor has no broker) are left out."""
    apply_sha, read_sha = sha_of("apply_events"), sha_of("read_access")
    rows = []
    for user, t0, t_end in zip(users, sent, denied, strict=False):
        at: dict[str, float | None] = {"published": t0}
        at["stamped"] = _first(
            commands, t0, t_end, lambda w: w[0] == "INCRBY" and w[1].endswith(":seq")
        )
        start = at["stamped"] or t0
        at["enqueued"] = _first(
            commands, start, t_end, lambda w: w[0] == "LPUSH" and w[1].startswith("crm.events")
        )
        at["fetched"] = _first(
            commands,
            at["enqueued"] or start,
            t_end,
            lambda w: w[0] == "ZADD" and w[1] == "unacked_index",
        )
        # The batch's JSON is split at its spaces: the user's field is a word `<user>",`.
        quoted = f'{user}"'
        at["lua"] = _first(
            commands,
            t0,
            t_end,
            lambda w, q=quoted: (
                w[0] == "EVALSHA" and w[1] == apply_sha and any(x.startswith(q) for x in w)
            ),
        )
        at["notified"] = _first(
            commands,
            at["lua"] or start,
            t_end,
            lambda w: w[0] == "PUBLISH" and w[1].endswith(":changes"),
        )
        if loaded:  # other batches' flushes and tasks interleave: only the user's own hops
            at["stamped"] = at["enqueued"] = at["fetched"] = None
        notified = at["notified"] or t0
        times = [min((t for t in h if t >= notified - 0.0005), default=None) for h in heard]
        at["heard"] = max(times) if times and None not in times else None  # type: ignore[type-var]
        at["refetched"] = _last(
            commands,
            notified,
            t_end,
            lambda w, u=user: w[0] == "EVALSHA" and w[1] == read_sha and u in w,
        )
        at["denied"] = t_end
        rows.append({h: (t - t0) * 1000 for h, t in at.items() if t is not None})
    return rows


def table(name: str, rows: list[dict[str, float]], phase: str = "lone revokes") -> list[str]:
    """Median time of reaching each hop, and the median step from the hop reached before it
    (in time: with the fast path the Lua runs before the task is sent)."""
    lines = [f"\n{name}: where the milliseconds go ({phase}, n={len(rows)}, medians)"]
    steps: dict[str, list[float]] = {}
    for row in rows:
        previous = 0.0
        for hop, at in sorted(row.items(), key=lambda item: item[1]):
            steps.setdefault(hop, []).append(at - previous)
            previous = at
    reached = {hop: statistics.median(r[hop] for r in rows if hop in r) for hop in steps}
    for hop, label in sorted((h for h in HOPS if h[0] in steps), key=lambda h: reached[h[0]]):
        at, step = reached[hop], statistics.median(steps[hop])
        lines.append(f"  {label:<42} at {at:7.2f} ms   step {step:6.2f} ms")
    return lines
