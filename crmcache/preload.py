"""Preload (resync): load a tenant's critical data from the Wrapper into the cache.

Everything is fetched first, then written: a Wrapper failure part-way writes nothing and the
tenant's readiness is unchanged. If Redis loses its data while the snapshot is fetched or written
(a new epoch), the rest is not written, the tenant is not marked ready, and StoreUnavailable
makes the caller start over. The snapshot's start stamp is taken before the Wrapper is asked
anything, so the store's snapshot scripts can keep every field that an event received after the
snapshot began has changed, and every upstream version applied before it
(crmcache/lua/snapshot_chunk.lua, snapshot_commit.lua).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crmcache.camel import camel_fields
from crmcache.errors import InvalidEvent
from crmcache.events import FieldWrite, parse_envelope, plan_writes
from crmcache.keyspace import DataClass
from crmcache.store import TOMBSTONE_RETENTION_S, Store
from crmcache.tokens import version_token
from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

PRELOADED = (DataClass.CREDIT_COSTS, DataClass.ROLES, DataClass.USER_STATUS, DataClass.USER_ROLES)


@dataclass
class PreloadReport:
    tenant: str
    snapshot_seq: int = 0
    written: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    superseded: bool = False
    token: str = ""
    """The consistency token of the tenant's data once marked ready ("" when superseded)."""

    def as_dict(self) -> dict[str, Any]:
        shown = {"skipped": self.skipped[:20], "skippedCount": len(self.skipped)}
        return {**camel_fields(self), **shown}


def snapshot_writes(
    tenant: str, event_type: str, items: Iterable[dict[str, Any]], skipped: list[str]
) -> list[FieldWrite]:
    """Turn snapshot items into field writes through the same validation as events."""
    writes: list[FieldWrite] = []
    for item in items:
        data = _as_event_data(event_type, item)
        try:
            event = parse_envelope(tenant, "users", {"eventType": event_type, "data": data})
        except InvalidEvent as exc:
            skipped.append(exc.reason)
            continue
        writes += [w for w in plan_writes(event).writes if w.value is not None]
    return writes


def _as_event_data(event_type: str, item: Any) -> Any:
    if event_type == "credit-config-changed" and isinstance(item, dict):
        return {"operationCode": item.get("operationCode"), "newValue": item.get("creditCost")}
    if event_type == "user-changed" and isinstance(item, dict):
        # A user in a snapshot always has both; a missing status means "no access".
        return {
            "userId": item.get("userId"),
            "status": item.get("status") or "unknown",
            "roles": item.get("roles") or [],
        }
    return item


def preload_tenant(
    store: Store,
    wrapper: WrapperClient,
    tenant: str,
    page_size: int = 1000,
    *,
    tombstone_retention_s: int = TOMBSTONE_RETENTION_S,
) -> PreloadReport:
    """Fetch the tenant's snapshot, write it without losing newer events or forgetting a
    version (deleted entities' versions are kept for `tombstone_retention_s`), mark it ready."""
    report = PreloadReport(tenant)
    s0 = store.begin_snapshot(tenant)
    report.snapshot_seq = s0.seq
    writes = snapshot_writes(
        tenant, "credit-config-changed", wrapper.credit_configs(tenant), report.skipped
    )
    writes += snapshot_writes(tenant, "role-changed", wrapper.roles(tenant), report.skipped)
    writes += snapshot_writes(
        tenant, "user-changed", wrapper.user_access(tenant, page_size), report.skipped
    )
    for data_class in PRELOADED:
        items = ((w.field, w.value or "") for w in writes if w.data_class is data_class)
        written, removed = store.write_snapshot(
            tenant, data_class, s0, items, tombstone_retention_s=tombstone_retention_s
        )
        if written < 0:
            report.superseded = True
            logger.info("preload of %s superseded by a newer snapshot", tenant)
            return report
        report.written[data_class.value] = written
        report.removed[data_class.value] = removed
    if report.skipped:
        logger.warning(
            "preload of %s skipped %d invalid items, first: %s",
            tenant,
            len(report.skipped),
            report.skipped[0],
        )
    report.token = version_token(s0.epoch, store.mark_ready(tenant, s0))
    return report
