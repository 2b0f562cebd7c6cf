"""Credit tasks: settlement (report the outbox to the Wrapper, ``crmcache.settlement``) and the
reconciler (holds past their deadline, leads whose charge is not confirmed,
``crmcache.reconcile``)."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task

from crmcache.errors import LeadStoreUnavailable, StoreUnavailable
from tasks import resources
from tasks.celery import app

logger = logging.getLogger(__name__)


@app.task(
    name="crmcache.settle_credits",
    bind=True,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=100,
)
def settle_credits(
    self: Task[Any, Any],
    tenant: str,
    entry_ids: list[str] | None = None,
    claim_idle_ms: int | None = None,
) -> dict[str, Any]:
    """Settle `tenant`'s outbox: new entries, or (`entry_ids`) our own earlier failures, or
    (`claim_idle_ms`) also entries a dead worker left pending. Entries the Wrapper did not
    acknowledge are retried with exponential backoff, then left to the periodic sweep."""
    settings = resources.settings()
    settler = resources.settler()
    if entry_ids is None:
        settler.scheduled_done(tenant)
    report = settler.drain(
        tenant, settings.settle_batch, entry_ids=entry_ids, min_idle_ms=claim_idle_ms
    )
    if report.more:
        settle_credits.delay(tenant)
    if report.unsettled:
        retries = self.request.retries
        if retries < settings.settle_max_retries:
            countdown = min(2.0**retries, 60.0) * random.uniform(0.5, 1.0)
            raise self.retry(
                args=(tenant,),
                kwargs={"entry_ids": report.unsettled},
                countdown=countdown,
                max_retries=settings.settle_max_retries,
            )
        logger.warning(
            "tenant=%s %d deductions still unsettled after %d retries: left to the sweep",
            tenant,
            len(report.unsettled),
            retries,
        )
    return report.as_dict()


@app.task(name="crmcache.settle_all")
def settle_all(guard: bool = True, claim_idle_ms: int | None = None) -> dict[str, Any]:
    """The periodic sweep (beat): a settle task per tenant with an outbox, taking over entries
    idle longer than CRM_SETTLE_CLAIM_IDLE. With `guard`, a second beat's run does nothing."""
    settings = resources.settings()
    settler = resources.settler()
    interval = settings.settle_sweep_interval
    if guard and not resources.store().claim_run("settle-all", max(int(interval * 0.8), 1)):
        return {"skipped": True}
    idle_ms = claim_idle_ms if claim_idle_ms is not None else int(settings.settle_claim_idle * 1000)
    tenants = sorted(set(settler.tenants()) | set(settings.tenants))
    for tenant in tenants:
        settle_credits.delay(tenant, claim_idle_ms=idle_ms)
    return {"skipped": False, "tenants": tenants}


@app.task(
    name="crmcache.reconcile_credits",
    autoretry_for=(StoreUnavailable, LeadStoreUnavailable),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=5,
)
def reconcile_credits(guard: bool = True) -> dict[str, Any]:
    """The reconciler's beat run over every tenant with credits or leads (see
    ``crmcache.reconcile``). With `guard`, a second beat's run does nothing; the steps are
    idempotent anyway."""
    settings = resources.settings()
    store = resources.store()
    if guard and not store.claim_run(
        "reconcile-credits", max(int(settings.reconcile_interval * 0.8), 1)
    ):
        return {"skipped": True}
    reconciler = resources.reconciler()
    lead_store = resources.lead_store()
    tenants = (
        set(store.credit_tenants())
        | set(settings.tenants)
        | set(lead_store.tenants_with_uncharged())
    )
    reports: dict[str, Any] = {}
    for tenant in sorted(tenants):
        report = reconciler.reconcile(tenant)
        if report.settle:
            settle_credits.delay(tenant)
        reports[tenant] = report.as_dict()
    return {"skipped": False, "tenants": reports}
