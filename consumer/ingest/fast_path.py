"""The revocation fast path: the subscriber applies a few revoking events itself, at once.

A suspension that goes through Celery pays for the task's publish, the broker, the worker's
consumer and its pool before ``apply_events.lua`` runs: most of the time between the Wrapper's
PUBLISH and the readers' denial (docs/latency.md). With ``CRM_REVOKE_FAST_PATH`` on, the
subscriber runs that same Lua on the stamped events of a flush that may revoke access (at most
``MAX_EVENTS`` of them; a flood of revocations is the workers' job), right after stamping them,
and then sends them as a task as always.

The task stays the durable path, so nothing is weakened: applying a stamped event twice changes
nothing (the eventId is a duplicate, or the field's stamp is not older than the event's), the
batch is recorded as applied either way (consumer/ingest/inflight.py), and if the fast path fails
(Redis slow or gone, a bug) it is only skipped: the worker applies the batch as before.
"""

from __future__ import annotations

import logging
from collections import Counter

from crmcache.errors import StoreUnavailable
from crmcache.events import Event, may_revoke
from crmcache.log_once import ReasonLog
from crmcache.store import Store

logger = logging.getLogger(__name__)

MAX_EVENTS = 10
"""Most revoking events of one tenant's flush applied by the subscriber itself."""


class FastPath:
    def __init__(self, store: Store, dedupe_window_s: int, stats: Counter[str]) -> None:
        self.store = store
        self.dedupe_window_s = dedupe_window_s
        self.stats = stats
        self.reasons = ReasonLog(64)
        """A failure recurs with every flush (a Redis login without the workers' rights, a
        bug): each reason is logged once."""

    def apply(self, tenant: str, stamped: list[Event]) -> None:
        """Apply the events of ``stamped`` that may revoke access, if they are few."""
        revoking = [event for event in stamped if may_revoke(event)]
        if not revoking or len(revoking) > MAX_EVENTS:
            return
        try:
            self.store.apply_events(tenant, revoking, dedupe_window_s=self.dedupe_window_s)
        except StoreUnavailable as exc:
            # The task applies them; a failing connection surfaces at the next stamp or read.
            logger.info(
                "tenant=%s fast path skipped (%s): the worker applies the batch", tenant, exc
            )
            return
        except Exception as exc:  # a refusal or a bug must not cost the batch: the task has it
            self.stats["fast_path_failures"] += 1
            if self.reasons.first(f"{type(exc).__name__}: {exc}"):
                logger.exception(
                    "tenant=%s fast path failed (logged once per reason): the worker applies "
                    "the batch",
                    tenant,
                )
            return
        self.stats["fast_path_events"] += len(revoking)
