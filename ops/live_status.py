"""``crmcache status --watch``: a view of the pipeline that redraws every second.

The view is computed by plain functions from two consecutive samples
(``inspection.watch_sample``), so it can be checked without a terminal; ``watch`` is the loop
around them, drawing with rich's ``Live`` (or printing one JSON object per sample).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from crmcache.read_metrics import CRITICAL_CLASSES, counter_field


@dataclass(frozen=True)
class Sample:
    """One reading of the cache: `data` from inspection.watch_sample, or `error`."""

    at: float
    """time.monotonic() when it was read: event rates divide by the time between samples."""
    now_ms: int
    data: dict[str, Any]
    error: str | None = None


def events_per_second(previous: Sample | None, current: Sample, tenant: str) -> float | None:
    """Events received per second between two samples (the growth of the tenant's receipt
    sequence); None for the first sample. A sequence that went back (Redis lost its data)
    counts as no events, not as a negative rate."""
    if previous is None or previous.error or current.error:
        return None
    before = previous.data["tenants"].get(tenant)
    elapsed = current.at - previous.at
    if before is None or elapsed <= 0:
        return None
    grown = int(current.data["tenants"][tenant]["received"]) - int(before["received"])
    return max(grown, 0) / elapsed


def near_cache_hit_rate(counters: dict[str, int]) -> float | None:
    """Share of critical reads (costs, permissions) the readers answered from their near-cache,
    since their counters began (readers flush them every CRM_METRICS_FLUSH_INTERVAL)."""
    requests = sum(
        counters.get(counter_field(c, "hits"), 0) + counters.get(counter_field(c, "misses"), 0)
        for c in CRITICAL_CLASSES
    )
    near = sum(counters.get(counter_field(c, "near"), 0) for c in CRITICAL_CLASSES)
    return near / requests if requests else None


def _age_s(ms: int | None, now_ms: int) -> float | None:
    return None if ms is None else max(now_ms - ms, 0) / 1000


def view(previous: Sample | None, current: Sample) -> dict[str, Any]:
    """What the screen shows (and --json prints), as plain data."""
    if current.error:
        return {"atMs": current.now_ms, "error": current.error}
    rows = []
    for tenant, data in current.data["tenants"].items():
        rows.append(
            {
                "tenant": tenant,
                "ready": data["ready"],
                "lastEventAgeS": _age_s(data["lastEventMs"], current.now_ms),
                "eventsPerSecond": events_per_second(previous, current, tenant),
                "nearCacheHitRate": near_cache_hit_rate(data["counters"]),
                "unsettledDeductions": data["outbox"],
                "oldestUnsettledAgeS": _age_s(data["oldestUnsettledMs"], current.now_ms),
            }
        )
    return {
        "atMs": current.now_ms,
        "tenants": rows,
        "deadLetters": current.data["deadLetters"],
        "subscriber": current.data["subscriber"],
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s ago"
    if value < 3600:
        return f"{value / 60:.0f}m ago"
    return f"{value / 3600:.1f}h ago"


def _outbox(row: dict[str, Any]) -> str:
    if not row["unsettledDeductions"]:
        return "empty"
    age = row["oldestUnsettledAgeS"]
    oldest = f", oldest {age:.0f}s" if age is not None else ""
    return f"{row['unsettledDeductions']} unsettled{oldest}"


def render(shown: dict[str, Any], interval: float = 1.0) -> Group:
    """The screen for one view: a table per tenant row, then the pipeline's shared parts."""
    clock = datetime.fromtimestamp(shown["atMs"] / 1000).strftime("%H:%M:%S")
    footer = Text(f"{clock}, every {interval:g}s; Ctrl-C stops", style="dim")
    if "error" in shown:
        return Group(Text(f"cannot read the cache: {shown['error']}", style="bold red"), footer)
    table = Table(title="crmcache status --watch", title_justify="left")
    for column in ("tenant", "ready", "last event", "events/s", "near-cache hits", "outbox"):
        table.add_column(column, justify="right" if column == "events/s" else "left")
    for row in shown["tenants"]:
        rate, hits = row["eventsPerSecond"], row["nearCacheHitRate"]
        table.add_row(
            row["tenant"],
            "[green]ready[/]" if row["ready"] else "[red]not ready[/]",
            _seconds(row["lastEventAgeS"]),
            "-" if rate is None else f"{rate:,.1f}",
            "-" if hits is None else f"{hits:.1%}",
            _outbox(row),
        )
    dead = shown["deadLetters"]
    subscriber = shown["subscriber"] or "[red]none[/]"
    lines = [
        f"dead letters  {dead['stored']} stored, {dead['total']} ever",
        f"subscriber    active: {subscriber}",
    ]
    if not shown["tenants"]:
        lines.insert(0, "[yellow]no tenant has data in the cache yet[/] (is a preload running?)")
    return Group(table, *(Text.from_markup(line) for line in lines), footer)


def watch(
    read: Callable[[], Sample],
    out: Console,
    interval: float = 1.0,
    as_json: bool = False,
    rounds: int | None = None,
) -> int:
    """Sample and redraw every `interval` seconds until Ctrl-C (or `rounds` samples); exit 0.
    With `as_json`, one JSON object per sample instead of a screen."""
    previous: Sample | None = None
    done = 0
    try:
        with _screen(out, as_json) as draw:
            while rounds is None or done < rounds:
                current = read()
                draw(view(previous, current), interval)
                previous, done = current, done + 1
                if rounds is None or done < rounds:
                    time.sleep(interval)
    except KeyboardInterrupt:
        pass  # the way to stop watching
    return 0


@contextlib.contextmanager
def _screen(out: Console, as_json: bool) -> Iterator[Callable[[dict[str, Any], float], None]]:
    if as_json:
        yield lambda shown, _: print(json.dumps(shown), flush=True)
        return
    with Live(console=out, auto_refresh=False, transient=False) as live:
        yield lambda shown, interval: live.update(render(shown, interval), refresh=True)
