"""``crmcache status``: the health of the cache, per tenant, at a glance."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from config.settings import Settings
from crmcache.errors import StoreUnavailable
from crmcache.store_base import now_ms
from ops import inspection, live_status
from ops.commands._common import Exit, add_command, cache_client, fail
from ops.commands._output import age, console, print_json

HELP = (
    "show readiness, entries, event/preload age, hit rates, dead letters, workers (--watch: live)"
)
DESCRIPTION = "Show the state of the cache and of the pipeline around it."
EPILOG = """\
Tenants: CRM_TENANTS, else every tenant with data in the cache (or --tenant).
Per tenant: ready (critical data loaded), entries per data class, age of the last applied
event and of the last preload, hit rates from the readers' last published metrics snapshot.
Overall: dead letters (stored / ever), the active subscriber (its lease), Celery workers that
answer a ping.

With --strict the exit code is 1 unless every tenant is ready, a subscriber is active and at
least one worker answers: usable as a readiness check in scripts.

With --watch the view redraws every --interval seconds until Ctrl-C (exit 0): per tenant ready
or not, age of the last event, events received per second, the readers' near-cache hit rate
(critical reads), unsettled credit deductions and the oldest one's age; dead letters and the
active subscriber. With --json, one JSON object per line per redraw."""


def register(sub: Any) -> None:
    add_command(sub, "status", run, HELP, DESCRIPTION, EPILOG, arguments=add_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant", action="append", metavar="T", help="only these tenants (repeatable)"
    )
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds to wait for workers' ping replies (0: do not ping; default %(default)s)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 unless all is healthy")
    parser.add_argument(
        "--watch", action="store_true", help="redraw a live view every second until Ctrl-C"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="with --watch: seconds between redraws (default %(default)s)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.watch:
        if args.strict or args.interval <= 0:
            return fail("--watch takes a positive --interval and no --strict", Exit.USAGE)
        return watch(args, settings)
    with cache_client(settings) as client:
        tenants = args.tenant or inspection.known_tenants(client, settings)
        status = inspection.stack_status(client, settings, tenants, args.ping_timeout)
    status["healthy"] = healthy(status)
    if args.json:
        print_json(status)
    else:
        render(status)
    return Exit.FAILED if args.strict and not status["healthy"] else Exit.OK


def watch(args: argparse.Namespace, settings: Settings) -> int:
    def read() -> live_status.Sample:
        at, now = time.monotonic(), now_ms()
        try:
            tenants = args.tenant or inspection.known_tenants(client, settings)
            return live_status.Sample(at, now, inspection.watch_sample(client, tenants))
        except StoreUnavailable as exc:
            return live_status.Sample(at, now, {}, error=f"Redis unreachable ({exc})")

    with cache_client(settings) as client:
        return live_status.watch(read, console(), args.interval, args.json)


def healthy(status: dict[str, Any]) -> bool:
    return (
        bool(status["tenants"])
        and all(t["ready"] for t in status["tenants"])
        and status["subscriber"]["active"] is not None
        and bool(status["workers"]["count"])
    )


def _rate(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def render(status: dict[str, Any]) -> None:
    out = console()
    if not status["tenants"]:
        out.print("[yellow]no tenant has data in the cache yet[/] (is a preload running?)")
    for tenant in status["tenants"]:
        table = Table(title=f"tenant {tenant['tenant']}", title_justify="left", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        ready = "[green]yes[/]" if tenant["ready"] else "[red]no[/] (never preloaded)"
        table.add_row("ready", ready)
        table.add_row(
            "entries", "  ".join(f"{name} {count}" for name, count in tenant["entries"].items())
        )
        table.add_row("last event", age(tenant["lastEventMs"]))
        table.add_row("last preload", age(tenant["lastPreloadMs"]))
        rates = tenant["hitRates"]
        if rates:
            for part in ("window", "totals"):
                if part in rates:
                    r = rates[part]
                    table.add_row(
                        f"hit rate ({part})",
                        f"critical {_rate(r.get('criticalHitRate'))}  "
                        f"reference {_rate(r.get('referenceHitRate'))}  "
                        f"overall {_rate(r.get('overallHitRate'))}  "
                        f"requests {r.get('totalRequests', '-')}",
                    )
        else:
            table.add_row("hit rates", "- (no metrics snapshot yet)")
        out.print(table)
    dead = status["deadLetters"]
    subscriber = status["subscriber"]["active"] or "[red]none[/]"
    workers = status["workers"]
    count = "[red]broker unreachable[/]" if workers["count"] is None else str(workers["count"])
    names = f" ({', '.join(workers['names'])})" if workers["names"] else ""
    out.print(f"dead letters  {dead['stored']} stored, {dead['total']} ever")
    out.print(f"subscriber    {subscriber}")
    out.print(f"workers       {count}{names}")
