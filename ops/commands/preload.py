"""``crmcache preload``: load tenants' critical data from the Wrapper, here or via the workers."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.progress import Progress

from config.settings import Settings
from crmcache.errors import CrmCacheError
from crmcache.keyspace import META_LAST_PRELOAD_MS, TenantKeys
from ops.commands._common import Exit, add_command, add_wait_option, cache_client, fail
from ops.commands._output import console, print_json

HELP = "load tenants' critical data from the Wrapper (resync)"
DESCRIPTION = "Preload (resync) critical data: credit costs, roles, user access."
EPILOG = """\
crmcache preload acme globex, or --tenant acme --tenant globex, or --all.
By default the preload runs in this process (the same code as the crmcache.preload_tenant
task) with a progress bar, and the command fails (exit 1) if any tenant fails. With --enqueue
it sends crmcache.preload_tenant tasks to the workers instead; add --wait to wait until each
tenant's last-preload time moves (exit 1 on timeout)."""


def register(sub: Any) -> None:
    add_command(sub, "preload", run, HELP, DESCRIPTION, EPILOG, arguments=add_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenants", nargs="*", metavar="TENANT", help="tenants to preload")
    parser.add_argument(
        "--tenant", action="append", default=[], metavar="T", help="a tenant (repeatable)"
    )
    parser.add_argument(
        "--all", action="store_true", help="every tenant (CRM_TENANTS or the Wrapper's list)"
    )
    parser.add_argument(
        "--enqueue", action="store_true", help="send tasks to the workers instead of running here"
    )
    add_wait_option(parser, "S", "with --enqueue: wait up to S seconds for the workers to finish")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.wait is not None and not args.enqueue:
        return fail("--wait only makes sense with --enqueue", Exit.USAGE)
    chosen = [*args.tenants, *args.tenant]
    if bool(chosen) == args.all:
        return fail("name the tenants to preload, or --all (not both)", Exit.USAGE)
    from crmcache.wrapper import WrapperClient

    wrapper = WrapperClient(settings)
    try:
        try:
            tenants = chosen or list(settings.tenants) or wrapper.tenants()
        except CrmCacheError as exc:
            return fail(f"cannot list tenants from the Wrapper: {exc}")
        for tenant in tenants:
            TenantKeys.of(tenant)  # InvalidTenant -> exit 2
        if args.enqueue:
            results = enqueue(settings, tenants, args.wait, show=not args.json)
        else:
            results = inline(settings, wrapper, tenants, show=not args.json)
    finally:
        wrapper.close()
    ok = all(r["ok"] for r in results)
    if args.json:
        print_json({"ok": ok, "tenants": results})
    else:
        out = console()
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[red]failed[/]"
            out.print(f"{r['tenant']:<20} {mark}  {r.get('detail', '')}")
    return Exit.OK if ok else Exit.FAILED


def _progress(show: bool) -> Progress:
    return Progress(console=console(stderr=True), disable=not (show and sys.stderr.isatty()))


def inline(
    settings: Settings, wrapper: Any, tenants: list[str], show: bool
) -> list[dict[str, Any]]:
    from crmcache.store import Store

    results: list[dict[str, Any]] = []
    with cache_client(settings) as client, _progress(show) as progress:
        store = Store(client)
        task = progress.add_task("preloading", total=len(tenants))
        for tenant in tenants:
            progress.update(task, description=f"preloading {tenant}")
            results.append(_preload_one(settings, store, wrapper, tenant))
            progress.advance(task)
    return results


def _preload_one(settings: Settings, store: Any, wrapper: Any, tenant: str) -> dict[str, Any]:
    from crmcache.preload import preload_tenant

    started = time.perf_counter()
    try:
        report = preload_tenant(
            store,
            wrapper,
            tenant,
            settings.preload_page_size,
            tombstone_retention_s=settings.tombstone_retention,
        )
    except CrmCacheError as exc:
        return {"tenant": tenant, "ok": False, "detail": str(exc)}
    took = round((time.perf_counter() - started) * 1000, 1)
    written = sum(report.written.values())
    detail = (
        "superseded by a newer snapshot"
        if report.superseded
        else f"{written} fields written in {took} ms"
    )
    return {"tenant": tenant, "ok": True, "detail": detail, "report": report.as_dict()}


def enqueue(
    settings: Settings, tenants: list[str], wait: float | None, show: bool
) -> list[dict[str, Any]]:
    from celery import Celery

    from config.amqp import TruncatingAMQP
    from config.celery import PRELOAD_QUEUE, celery_config

    app = Celery("crmcache-cli", amqp=TruncatingAMQP)
    app.conf.update(celery_config(settings))
    try:
        with cache_client(settings) as client:
            before = {t: _last_preload(client, t) for t in tenants}
            results = []
            for tenant in tenants:
                result = app.send_task(
                    "crmcache.preload_tenant",
                    args=(tenant,),
                    kwargs={"reason": "cli"},
                    queue=PRELOAD_QUEUE,
                    routing_key=PRELOAD_QUEUE,
                )
                results.append({"tenant": tenant, "ok": True, "detail": f"enqueued {result.id}"})
            if wait is not None:
                _wait(client, results, before, wait, show)
    finally:
        app.close()
    return results


def _wait(
    client: Any, results: list[dict[str, Any]], before: dict[str, int], wait: float, show: bool
) -> None:
    deadline = time.monotonic() + wait
    pending = {r["tenant"]: r for r in results}
    with _progress(show) as progress:
        task = progress.add_task("waiting for the workers", total=len(pending))
        while pending and time.monotonic() < deadline:
            for tenant in list(pending):
                if _last_preload(client, tenant) > before[tenant]:
                    pending.pop(tenant)["detail"] += ", done"
                    progress.advance(task)
            time.sleep(0.1)
    for result in pending.values():
        result["ok"] = False
        result["detail"] += f", not done after {wait:g}s"


def _last_preload(client: Any, tenant: str) -> int:
    raw = client.hget(TenantKeys.of(tenant).meta, META_LAST_PRELOAD_MS)
    return int(raw) if raw else 0
