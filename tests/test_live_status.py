"""``crmcache status --watch``: the view's arithmetic and rendering without a terminal, the JSON
lines a script reads while events flow, and the real screen driven in tmux."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

from crmcache.keyspace import TenantKeys
from ops.inspection import watch_sample
from ops.live_status import Sample, events_per_second, near_cache_hit_rate, render, view
from tests.conftest import wait_until

CRMCACHE = str(Path(sys.executable).with_name("crmcache"))


def sample(at: float, received: int, **tenant: Any) -> Sample:
    acme = {
        "ready": True,
        "lastEventMs": 9_000,
        "received": received,
        "counters": {},
        "outbox": 0,
        "oldestUnsettledMs": None,
        **tenant,
    }
    data = {
        "tenants": {"acme": acme},
        "deadLetters": {"stored": 1, "total": 3},
        "subscriber": "host:7:ab",
    }
    return Sample(at, 10_000, data)


@pytest.mark.parametrize(
    ("before", "after", "elapsed", "rate"),
    [
        (None, 50, 1.0, None),  # the first sample has nothing to compare with
        (100, 150, 1.0, 50.0),
        (100, 150, 0.5, 100.0),
        (100, 100, 1.0, 0.0),
        (900, 5, 1.0, 0.0),  # the sequence went back (Redis lost its data): no negative rate
    ],
)
def test_events_per_second_is_the_growth_of_the_receipt_sequence(
    before: int | None, after: int, elapsed: float, rate: float | None
) -> None:
    previous = None if before is None else sample(10.0, before)
    assert events_per_second(previous, sample(10.0 + elapsed, after), "acme") == rate


@pytest.mark.parametrize(
    ("counters", "rate"),
    [
        ({}, None),
        ({"credit-costs:hits": 3, "credit-costs:misses": 1, "credit-costs:near": 2}, 0.5),
        ({"permissions:hits": 4, "permissions:near": 4, "profile:hits": 90}, 1.0),
    ],
)
def test_near_cache_hit_rate_counts_critical_reads_only(
    counters: dict[str, int], rate: float | None
) -> None:
    assert near_cache_hit_rate(counters) == rate


def test_the_view_renders_without_a_terminal() -> None:
    # Given two samples a second apart: 12 events received, 3 of 4 reads from the near-cache,
    # two deductions waiting for the Wrapper, the oldest for 30 s
    counters = {"credit-costs:hits": 4, "credit-costs:near": 3}
    extra = {"counters": counters, "outbox": 2, "oldestUnsettledMs": 10_000 - 30_000}
    previous, current = sample(1.0, 100, **extra), sample(2.0, 112, **extra)
    # When the screen is drawn into a string
    out = Console(file=io.StringIO(), width=120, color_system=None)
    out.print(render(view(previous, current)))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    # Then it shows every figure
    row = next(line for line in text.splitlines() if "acme" in line)
    assert re.search(r"acme .*ready .*1\.0s ago .*12\.0 .*75\.0% .*2 unsettled, oldest 30s", row)
    assert "dead letters  1 stored, 3 ever" in text
    assert "subscriber    active: host:7:ab" in text


def test_an_unreachable_redis_is_shown_not_raised() -> None:
    out = Console(file=io.StringIO(), width=100, color_system=None)
    out.print(render(view(None, Sample(1.0, 10_000, {}, error="Redis unreachable (refused)"))))
    assert "cannot read the cache: Redis unreachable (refused)" in out.file.getvalue()  # type: ignore[attr-defined]


def test_watch_sample_reads_the_cache_in_one_round_trip(r: redis.Redis) -> None:
    keys = TenantKeys.of("acme")
    r.hset(keys.meta, mapping={"ready": 1, "last-event-ms": 1234})
    r.set(keys.seq, 42)
    r.xadd(keys.credit_outbox, {"amount": "1"}, id="5000-0")
    found = watch_sample(r, ["acme", "globex"])
    assert found["tenants"]["acme"] == {
        "ready": True,
        "lastEventMs": 1234,
        "received": 42,
        "counters": {},
        "outbox": 1,
        "oldestUnsettledMs": 5000,
    }
    assert found["tenants"]["globex"]["ready"] is False
    assert found["deadLetters"] == {"stored": 0, "total": 0}


@pytest.fixture
def event_flow(subscriber: Any, r: redis.Redis) -> Iterator[threading.Event]:
    """Cost changes for acme published at about 50 a second until the test ends."""
    r.hset(TenantKeys.of("acme").meta, "ready", 1)
    stop = threading.Event()
    publisher = redis.Redis(connection_pool=r.connection_pool)

    def publish() -> None:
        value = 0
        while not stop.wait(0.02):
            value += 1
            event = {
                "eventType": "credit-config-changed",
                "data": {"operationCode": "crm.watch", "newValue": value},
            }
            publisher.publish(TenantKeys.of("acme").channel("credit-configs"), json.dumps(event))

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    yield stop
    stop.set()
    thread.join(timeout=5)


def test_watch_json_prints_a_line_per_redraw_with_the_event_rate(
    event_flow: threading.Event,
) -> None:
    # Given events flowing, when a script watches with --json
    watching = subprocess.Popen(
        [CRMCACHE, "status", "--watch", "--json", "--interval", "0.3", "--tenant", "acme"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watching.stdout is not None
        lines = [json.loads(watching.stdout.readline()) for _ in range(4)]
    finally:
        watching.send_signal(signal.SIGINT)
        code = watching.wait(timeout=10)
    # Then each line is a view, the rate shows the flow, and Ctrl-C exits 0
    rates = [line["tenants"][0]["eventsPerSecond"] for line in lines]
    assert rates[0] is None and all(rate > 0 for rate in rates[1:]), rates
    assert lines[-1]["tenants"][0]["ready"] is True
    assert code == 0, watching.stderr.read() if watching.stderr else ""


def _events_per_second(screen: str) -> str | None:
    row = next((line for line in screen.splitlines() if "│ acme" in line), None)
    cells = [cell.strip() for cell in row.split("│")] if row else []
    return cells[4] if len(cells) > 4 else None


def test_watch_redraws_a_changing_event_rate_in_a_terminal(
    event_flow: threading.Event, tmp_path: Path
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the terminal check needs it (apt-get install tmux)")
    # Given a terminal (tmux on a socket of its own) running the live view while events flow
    tmux = ["tmux", "-L", f"crmcache-test-{os.getpid()}", "-f", "/dev/null"]
    command = f"exec {CRMCACHE} status --watch --tenant acme"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "watch", "-x", "140", "-y", "30", command],
        env={**os.environ, "TERM": "xterm-256color"},
        check=True,
    )
    try:

        def screen() -> str:
            done = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "watch"], capture_output=True, text=True
            )
            return done.stdout

        # When the screen is read a few times, a second or so apart
        figures = []
        deadline = time.monotonic() + 20
        while len(set(figures)) < 2 and time.monotonic() < deadline:
            figure = _events_per_second(screen())
            if figure not in (None, "-"):
                figures.append(figure)
            time.sleep(1.1)
        # Then the events/s figure is shown and changes between redraws
        assert len(set(figures)) >= 2, screen()
        assert all(float(f.replace(",", "")) > 0 for f in figures), figures
        # And Ctrl-C ends it
        subprocess.run([*tmux, "send-keys", "-t", "watch", "C-c"], check=True)
        wait_until(
            lambda: subprocess.run([*tmux, "has-session", "-t", "watch"]).returncode != 0,
            timeout=10,
            what="the view to exit on Ctrl-C",
        )
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
