"""The publish_metrics step for one tenant: aggregate every reader's flushed counters, store a
snapshot, publish it on ``crm:<t>:metrics``, and publish an alert when the critical hit rate
of the window since the previous snapshot is below the threshold (README.md, "Operating it").

The arithmetic is ``read_metrics.build_snapshot`` (pure); this module only does the Redis I/O.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from config.tenancy import is_valid_tenant
from crmcache.read_metrics import build_snapshot
from crmcache.store import Store, now_ms

logger = logging.getLogger(__name__)


def tenants_with_metrics(store: Store) -> list[str]:
    """Tenants whose readers ever flushed counters (``crm:metrics:tenants``)."""
    return sorted(t for t in store.metrics_tenants() if is_valid_tenant(t))


def publish_tenant_metrics(
    store: Store, tenant: str, threshold: float, at_ms: int | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Snapshot, store and publish one tenant's metrics; returns (snapshot, alert or None)."""
    current, raw_previous = store.metrics_counters(tenant)
    previous = _previous_counters(raw_previous)
    snapshot, alert = build_snapshot(
        tenant, current, previous, threshold, at_ms if at_ms is not None else now_ms()
    )
    published = {k: v for k, v in snapshot.items() if k != "counters"}
    messages = [_compact(published)] + ([_compact(alert)] if alert is not None else [])
    store.store_metrics_snapshot(tenant, _compact(snapshot), messages)
    if alert is not None:
        logger.warning(
            "tenant=%s critical hit rate %.4f below threshold %.4f (%d hits, %d misses)",
            tenant,
            alert["criticalHitRate"],
            threshold,
            alert["criticalHits"],
            alert["criticalMisses"],
        )
    return snapshot, alert


def _previous_counters(raw: bytes | None) -> dict[str, int] | None:
    if raw is None:
        return None
    try:
        counters = json.loads(raw).get("counters")
    except (ValueError, AttributeError):
        return None
    if not isinstance(counters, dict):
        return None
    return {str(k): int(v) for k, v in counters.items() if isinstance(v, int)}


def _compact(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
