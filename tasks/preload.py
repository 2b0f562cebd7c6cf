"""Preload tasks: one tenant's snapshot, and the periodic fan-out over every tenant."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task

from crmcache import preload, preload_runs
from crmcache.errors import StoreUnavailable, WrapperError, WrapperUnavailable
from tasks import resources
from tasks.celery import app

logger = logging.getLogger(__name__)

MAX_RETRIES = 8
RETRY_BACKOFF_MAX = 60


def retry_countdown(retries: int) -> float:
    """Exponential backoff from 1 s, capped, with full jitter."""
    return random.uniform(0, min(RETRY_BACKOFF_MAX, 2.0**retries))


@app.task(bind=True, name="crmcache.preload_tenant", max_retries=MAX_RETRIES)
def preload_tenant(
    self: Task[Any, Any], tenant: str, reason: str = "manual", run: str | None = None
) -> dict[str, Any]:
    """Load `tenant`'s critical data from the Wrapper; never overwrites a newer event.

    At most CRM_PRELOAD_CONCURRENCY preloads ask the Wrapper at once (fleet-wide); an outage is
    retried with backoff; the outcome is counted in run `run` (crmcache/preload_runs.py).
    """
    store, settings = resources.store(), resources.settings()
    try:
        with resources.wrapper_slots().hold(settings.preload_slot_wait):
            report = preload.preload_tenant(
                store,
                resources.wrapper(),
                tenant,
                settings.preload_page_size,
                tombstone_retention_s=settings.tombstone_retention,
            )
    except (StoreUnavailable, WrapperUnavailable) as exc:
        if self.request.retries >= MAX_RETRIES:
            logger.error("tenant=%s preload (%s) failed for good: %s", tenant, reason, exc)
            _record(run, tenant, "failed", str(exc))
            raise
        logger.warning("tenant=%s preload (%s) failed, retrying: %s", tenant, reason, exc)
        _record(run, tenant, "retry", str(exc))
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from None
    except WrapperError as exc:  # a 404 or an answer we cannot use: retrying will not help
        logger.error("tenant=%s preload (%s) failed: %s", tenant, reason, exc)
        _record(run, tenant, "failed", str(exc))
        raise
    _record(run, tenant, "done")
    logger.info("tenant=%s preloaded (%s): %s", tenant, reason, report.as_dict())
    return report.as_dict()


def _record(run: str | None, tenant: str, outcome: str, reason: str = "") -> None:
    try:
        preload_runs.record(resources.store(), run, tenant, outcome, reason)
    except StoreUnavailable:
        logger.warning(
            "tenant=%s preload outcome %s not recorded: Redis unavailable", tenant, outcome
        )


def tenants_to_serve() -> list[str]:
    """CRM_TENANTS, else the Wrapper's tenant list."""
    configured = resources.settings().tenants
    return list(configured) if configured else resources.wrapper().tenants()


@app.task(
    name="crmcache.preload_all",
    autoretry_for=(StoreUnavailable, WrapperUnavailable),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=5,
)
def preload_all(
    reason: str = "schedule", guard: bool = True, tenants: list[str] | None = None
) -> dict[str, Any]:
    """Enqueue a preload of every tenant (or of `tenants`) as one run whose progress is kept
    in Redis. With `guard`, a second beat's run does nothing."""
    settings = resources.settings()
    store = resources.store()
    if guard and not store.claim_run("preload-all", max(int(settings.preload_interval * 0.8), 1)):
        logger.info("preload_all (%s): another beat already ran this interval", reason)
        return {"skipped": True}
    tenants = list(tenants) if tenants is not None else tenants_to_serve()
    run = preload_runs.start_run(store, tenants)
    for tenant in tenants:
        preload_tenant.delay(tenant, reason=reason, run=run)
    logger.info("preload_all (%s): run %s enqueued %d tenants", reason, run, len(tenants))
    return {"skipped": False, "run": run, "tenants": tenants}
