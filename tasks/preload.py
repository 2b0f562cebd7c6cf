"""Preload tasks: one tenant's snapshot, and the periodic fan-out over every tenant."""

from __future__ import annotations

import logging
from typing import Any

from crmcache import preload
from crmcache.errors import StoreUnavailable, WrapperUnavailable
from tasks import resources
from tasks.app import app

logger = logging.getLogger(__name__)


@app.task(
    name="crmcache.preload_tenant",
    autoretry_for=(StoreUnavailable, WrapperUnavailable),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def preload_tenant(tenant: str, reason: str = "manual") -> dict[str, Any]:
    """Load `tenant`'s critical data from the Wrapper; never overwrites a newer event."""
    report = preload.preload_tenant(
        resources.store(), resources.wrapper(), tenant, resources.settings().preload_page_size
    )
    logger.info("tenant=%s preloaded (%s): %s", tenant, reason, report.as_dict())
    return report.as_dict()


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
def preload_all(reason: str = "schedule", guard: bool = True) -> dict[str, Any]:
    """Enqueue a preload of every tenant. With `guard`, a second beat's run does nothing."""
    settings = resources.settings()
    if guard and not resources.store().claim_run(
        "preload-all", max(int(settings.preload_interval * 0.8), 1)
    ):
        logger.info("preload_all (%s): another beat already ran this interval", reason)
        return {"skipped": True}
    tenants = tenants_to_serve()
    for tenant in tenants:
        preload_tenant.delay(tenant, reason=reason)
    logger.info("preload_all (%s): enqueued %d tenants", reason, len(tenants))
    return {"skipped": False, "tenants": tenants}
