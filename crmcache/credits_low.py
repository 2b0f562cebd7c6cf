"""Low-balance alerts: a message on ``crm:<t>:credits-low`` when a user's available balance
crosses below the tenant's threshold (``CRM_CREDITS_LOW_THRESHOLD``).

Only a crossing is announced (before >= threshold > after), never every charge below it, so
that a user living at zero does not flood the channel. The charge's own before and after are
exact (each is one atomic step), so two concurrent charges cannot both announce one crossing.
Pub/sub is at most once: a subscriber that wants every alert also watches the balances.
"""

from __future__ import annotations

import json
import logging

from crmcache.credits import Number
from crmcache.errors import StoreUnavailable
from crmcache.keyspace import TenantKeys
from crmcache.store import Store

logger = logging.getLogger(__name__)


def crossed_below(before: Number, after: Number, threshold: Number) -> bool:
    return before >= threshold > after


def notice(
    store: Store,
    tenant: str,
    user_id: str,
    before: Number | None,
    after: Number,
    threshold: Number | None,
) -> bool:
    """Publish the alert when this charge crossed the threshold; True when it did."""
    if threshold is None or before is None or not crossed_below(before, after, threshold):
        return False
    message = json.dumps({"userId": user_id, "available": after, "threshold": threshold})
    try:
        store.publish(TenantKeys.of(tenant).credits_low_channel, message)
    except StoreUnavailable as exc:
        logger.warning("tenant=%s low-balance alert for %s not published: %s", tenant, user_id, exc)
    return True
