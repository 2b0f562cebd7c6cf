"""``crmcache dlq``: the dead-letter stream (messages rejected by the subscriber or a task)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from config.settings import Settings
from crmcache.event_validation import EventLimits
from ops import dead_letters
from ops.commands._common import Exit, add_command, add_json_flag, cache_client, fail
from ops.commands._output import console, print_json

HELP = "list, show, replay or purge dead-lettered messages"
DESCRIPTION = "Work with the dead-letter stream."
EPILOG = """\
  crmcache dlq list [--limit N] [--tenant T]   newest first
  crmcache dlq show ID                         the whole entry, raw message included
  crmcache dlq replay ID | --all               validate, re-PUBLISH on its channel, delete
  crmcache dlq purge --yes                     delete every stored entry

A replay checks the raw message against the event contract first (an entry that is still
invalid is kept, exit 1) and deletes the entry only once a subscriber received it (pub/sub
keeps nothing: with no subscriber listening the entry is kept, exit 1). Entries rejected inside
a task have no channel and cannot be replayed."""


def register(sub: Any) -> None:
    parser = add_command(sub, "dlq", run, HELP, DESCRIPTION, EPILOG, json=False)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list entries, newest first")
    listing.add_argument("--limit", type=int, default=20, help="at most N (default %(default)s)")
    listing.add_argument("--tenant", help="only this tenant's entries")
    show = actions.add_parser("show", help="show one entry")
    show.add_argument("id", help="the entry id (e.g. 1732600000000-0)")
    replay = actions.add_parser("replay", help="replay one entry, or all")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", help="the entry id")
    target.add_argument("--all", action="store_true", help="every stored entry, oldest first")
    purge = actions.add_parser("purge", help="delete every stored entry")
    purge.add_argument("--yes", action="store_true", help="really delete (required)")
    for action in (listing, show, replay, purge):
        add_json_flag(action)


def run(args: argparse.Namespace, settings: Settings) -> int:
    action = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}[args.action]
    with cache_client(settings) as client:
        return action(args, settings, client)


def _when(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if at_ms else "-"


def _list(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    entries = dead_letters.list_entries(client, max(args.limit, 0), tenant=args.tenant)
    if args.json:
        print_json([entry.summary() for entry in entries])
        return Exit.OK
    table = Table(title=f"dead letters (newest {len(entries)})", title_justify="left")
    for column in ("id", "at (UTC)", "tenant", "channel", "size", "reason"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.id,
            _when(entry.at_ms),
            entry.tenant or "-",
            entry.channel or "-",
            str(entry.size),
            entry.reason[:120],
        )
    console().print(table)
    return Exit.OK


def _show(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    if not dead_letters.is_entry_id(args.id):
        return fail(f"not an entry id: {args.id!r}", Exit.USAGE)
    entry = dead_letters.get_entry(client, args.id)
    if entry is None:
        return fail(f"no dead letter {args.id}")
    body = entry.as_dict()
    if args.json:
        print_json(body)
        return Exit.OK
    out = console()
    for name in ("id", "tenant", "channel", "reason", "size", "truncated"):
        out.print(f"[bold]{name:<10}[/] {body[name]}", markup=True)
    out.print(f"[bold]{'at':<10}[/] {_when(entry.at_ms)} UTC")
    out.print("[bold]raw[/]")
    out.print(body["raw"], markup=False, highlight=False)
    return Exit.OK


def _replay(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    if args.all:
        entries = dead_letters.list_entries(client, 1_000_000, oldest_first=True)
    else:
        if not dead_letters.is_entry_id(args.id):
            return fail(f"not an entry id: {args.id!r}", Exit.USAGE)
        entry = dead_letters.get_entry(client, args.id)
        if entry is None:
            return fail(f"no dead letter {args.id}")
        entries = [entry]
    results = [dead_letters.replay(client, e, EventLimits.of(settings)) for e in entries]
    ok = all(r.ok for r in results)
    if args.json:
        print_json({"ok": ok, "results": [r.as_dict() for r in results]})
    else:
        out = console()
        for r in results:
            mark = "[green]replayed[/]" if r.ok else f"[red]{r.outcome}[/]"
            out.print(f"{r.id}  {mark}  {r.detail}")
        if not results:
            out.print("nothing to replay")
    return Exit.OK if ok else Exit.FAILED


def _purge(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    if not args.yes:
        return fail("purge deletes every stored dead letter: add --yes", Exit.USAGE)
    count = dead_letters.purge(client)
    if args.json:
        print_json({"purged": count})
    else:
        console().print(f"purged {count} dead letters")
    return Exit.OK
