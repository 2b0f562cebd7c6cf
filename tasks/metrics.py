"""publish_metrics: the beat task that aggregates the readers' counters of every tenant."""

from __future__ import annotations

import logging
from typing import Any

from crmcache.errors import StoreUnavailable
from crmcache.metrics_report import publish_tenant_metrics, tenants_with_metrics
from tasks import resources
from tasks.celery import app

logger = logging.getLogger(__name__)


@app.task(
    name="crmcache.publish_metrics",
    autoretry_for=(StoreUnavailable,),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=3,
)
def publish_metrics(guard: bool = True) -> dict[str, Any]:
    """Snapshot and publish every tenant's read metrics; alert below the hit-rate threshold.

    With ``guard``, only the first run per interval does the work (two beats are safe).
    """
    settings = resources.settings()
    store = resources.store()
    ttl = max(int(settings.metrics_publish_interval * 0.8), 1)
    if guard and not store.claim_run("publish-metrics", ttl):
        logger.info("publish_metrics: another beat already ran this interval")
        return {"skipped": True}
    tenants = sorted(set(tenants_with_metrics(store)) | set(settings.tenants))
    alerts = []
    for tenant in tenants:
        _, alert = publish_tenant_metrics(store, tenant, settings.hit_rate_threshold)
        if alert is not None:
            alerts.append(tenant)
    return {"skipped": False, "tenants": tenants, "alerts": alerts}
