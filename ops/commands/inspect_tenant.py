"""``crmcache inspect TENANT``: what is cached for one tenant, with stamps and versions."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from rich.table import Table

from config.settings import Settings
from crmcache.keyspace import DATA_CLASSES, TenantKeys
from ops import inspection
from ops.commands._common import Exit, add_command, cache_client
from ops.commands._output import age, console, print_json

HELP = "show what is cached for a tenant, with stamps and versions"
DESCRIPTION = "Show everything cached for one tenant."
EPILOG = """\
Critical data (credit-costs, roles, user-status, user-roles, configs) is shown with each field's
stamp: "<seq>" or "<seq>:<version>" of the event that set it (a newer event wins),
"<seq>:<version>+" for a value the preload that started at sequence <seq> loaded or confirmed
(the entity is at that version or later: an older version is refused), or "snapshot <= N" for
a value loaded by the preload that started at sequence N (the class floor: events stamped at or
below it are refused). A stamp without a value is a tombstone: the field was deleted and an
older write cannot bring it back.
Reference entries (profiles, hierarchy nodes) are shown with two times: fresh until (after it a
read fetches from the Wrapper again) and stale until (Redis keeps the entry that long so that
it can still be served while the Wrapper fails: CRM_REFERENCE_MAX_STALE)."""


def register(sub: Any) -> None:
    add_command(sub, "inspect", run, HELP, DESCRIPTION, EPILOG, arguments=add_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant", help="tenant id")
    parser.add_argument(
        "--class",
        dest="data_class",
        choices=[dc.value for dc in DATA_CLASSES],
        action="append",
        help="only this data class (repeatable)",
    )
    parser.add_argument(
        "--limit", type=int, default=50, help="entries shown per class (default %(default)s)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    TenantKeys.of(args.tenant)  # InvalidTenant -> exit 2
    with cache_client(settings) as client:
        contents = inspection.tenant_contents(client, args.tenant, max(args.limit, 0))
    if args.data_class:
        contents["classes"] = {k: v for k, v in contents["classes"].items() if k in args.data_class}
    if args.json:
        print_json(contents)
    else:
        render(contents)
    return Exit.OK


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def render(contents: dict[str, Any]) -> None:
    out = console()
    meta = contents["meta"]
    ready = "[green]ready[/]" if contents["ready"] else "[red]not ready[/]"
    out.print(
        f"[bold]tenant {contents['tenant']}[/]  {ready}  version {meta.get('version', '-')}  "
        f"sequence {contents['sequence'] or 0}  last event {age(_int(meta.get('last-event-ms')))}"
        f"  last preload {age(_int(meta.get('last-preload-ms')))}"
    )
    for name, data in contents["classes"].items():
        table = Table(
            title=f"{name}: {data['count']} entries, {data['tombstones']} tombstones",
            title_justify="left",
        )
        table.add_column("field", overflow="fold")
        table.add_column("value", overflow="fold")
        table.add_column("stamp (seq[:version][+])")
        snapshot = f"snapshot <= {data['floor']}" if data.get("floor") else "-"
        for entry in data["entries"]:
            table.add_row(entry["field"], _short(entry["value"]), entry["stamp"] or snapshot)
        for tomb in data["tombstoneEntries"]:
            table.add_row(tomb["field"], "[dim](deleted)[/]", tomb["stamp"])
        if data["count"] or data["tombstones"]:
            out.print(table)
        else:
            out.print(f"[dim]{name}: empty[/]")
    for kind, entries in contents["references"].items():
        if not entries:
            continue
        table = Table(title=f"reference: {kind}", title_justify="left")
        table.add_column("id", overflow="fold")
        table.add_column("fresh until")
        table.add_column("stale until (kept for stale-if-error)")
        table.add_column("entry", overflow="fold")
        for entry in entries:
            table.add_row(
                entry["id"],
                until(entry.get("freshUntilMs")),
                until(entry.get("staleUntilMs")),
                _short(entry["entry"]),
            )
        out.print(table)
    if contents["balances"]:
        balances = ", ".join(f"{u} {b}" for u, b in contents["balances"].items())
        out.print(f"balances      {balances}")
    holding, outbox = contents["usersHoldingCredits"], contents["creditOutbox"]
    out.print(f"users holding credits {holding}, credit outbox {outbox} unsettled")


def until(ms: int | None, now_ms: int | None = None) -> str:
    """'14:05:09 (in 4m 10s)' in local time, 'passed 14:05:09' once it is over; '-' for never."""
    if ms is None:
        return "-"
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    clock = datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")
    left = (ms - now_ms) // 1000
    if left < 0:
        return f"passed {clock}"
    minutes, seconds = divmod(left, 60)
    return f"{clock} (in {minutes}m {seconds:02d}s)" if minutes else f"{clock} (in {seconds}s)"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
