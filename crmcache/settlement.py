"""Settlement: report every deduction in a tenant's credit outbox to the Wrapper, exactly once
in effect (README.md, "Credits: reservations and leads").

The outbox is a Redis stream (``crm:{t}:credit-outbox``) with one consumer group,
``settlers``. Why a consumer group rather than a hand-made pending set: the deduct script
already appends to the stream, and the group's pending-entries list gives us, for free, who
holds an entry, how long it has been idle and how often it was delivered; ``XAUTOCLAIM`` is the
standard way to take over the entries of a consumer that died.

* ``read_new`` (XREADGROUP ``>``) hands each new entry to exactly one settler; it is now
  pending under that settler's name.
* ``settle`` POSTs each entry to ``/api/credits/consume`` with the deduction id as the
  Wrapper's idempotency key, and only after a 2xx answer acknowledges *and* deletes it
  (XACK + XDEL in one MULTI). A crash at any point before that leaves it pending.
* ``claim_idle`` (XAUTOCLAIM) takes over entries pending for longer than the claim idle time
  (a killed worker's) and sends them again. The Wrapper dedupes by key, so an entry sent twice
  (the first answer lost) is charged once. The idle time must exceed the longest send
  (connect + read timeout times the retries), or a slow live send is duplicated (harmless,
  only wasteful).
* A 404 from the Wrapper (it knows no such user or tenant) cannot succeed later: the entry is
  moved to the dead-letter stream with its reason, then acknowledged. Every other failure
  leaves it pending for a retry.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crmcache.credits import as_number
from crmcache.errors import WrapperError, WrapperNotFound, WrapperUnavailable
from crmcache.store import Store
from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

MAX_ROUNDS = 20
"""Batches one drain settles before it hands over to a fresh task (keeps tasks short)."""
DEAD_CONSUMER_IDLE_MS = 86_400_000


@dataclass(frozen=True)
class OutboxEntry:
    entry_id: str
    fields: dict[str, str]

    def consume_body(self) -> dict[str, Any]:
        """The Wrapper's ``POST /api/credits/consume`` body (docs/wrapper-api.md)."""
        return {
            "idempotencyKey": self.fields["deductionId"],
            "userId": self.fields["userId"],
            "operationCode": self.fields["operationCode"],
            "amount": as_number(self.fields["amount"]),
            "occurredAt": self.fields["occurredAt"],
        }


@dataclass
class SettleReport:
    settled: list[str] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)
    """Still pending (Wrapper down or refusing): retried later."""
    rejected: list[str] = field(default_factory=list)
    """Dead-lettered (the Wrapper answered 404)."""
    more: bool = False
    """The drain stopped at MAX_ROUNDS with entries left."""

    def merge(self, other: SettleReport) -> None:
        self.settled += other.settled
        self.unsettled += other.unsettled
        self.rejected += other.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "settled": len(self.settled),
            "unsettled": len(self.unsettled),
            "rejected": len(self.rejected),
            "more": self.more,
        }


def consumer_name() -> str:
    """This process's name in the consumer group (computed per call: pools fork)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _entries(records: Iterable[tuple[str, dict[str, str]]]) -> list[OutboxEntry]:
    return [OutboxEntry(entry_id, fields) for entry_id, fields in records]


class Settler:
    """Moves outbox entries to the Wrapper; one per worker process."""

    def __init__(self, store: Store, wrapper: WrapperClient) -> None:
        self.store = store
        self.wrapper = wrapper

    # --- reading the outbox ------------------------------------------------------------------

    def ensure_group(self, tenant: str) -> None:
        self.store.ensure_outbox_group(tenant)

    def read_new(self, tenant: str, count: int) -> list[OutboxEntry]:
        """Entries no settler has seen yet; they become pending under this process."""
        return _entries(self.store.read_outbox(tenant, consumer_name(), count))

    def claim(self, tenant: str, entry_ids: list[str]) -> list[OutboxEntry]:
        """Take these pending entries over (a retry of ours); settled ones are skipped."""
        if not entry_ids:
            return []
        return _entries(self.store.claim_outbox(tenant, consumer_name(), entry_ids))

    def claim_idle(self, tenant: str, min_idle_ms: int, count: int) -> list[OutboxEntry]:
        """Take over entries pending longer than `min_idle_ms` (their settler died)."""
        return _entries(self.store.claim_idle_outbox(tenant, consumer_name(), min_idle_ms, count))

    def scheduled_done(self, tenant: str) -> None:
        """Clear the 'a settle task is queued' flag *before* reading: a deduction after this
        point enqueues a new task, so no entry is ever left without a task behind it."""
        self.store.unschedule_settlement(tenant)

    def tenants(self) -> list[str]:
        return self.store.credit_tenants()

    def outbox_length(self, tenant: str) -> int:
        """Deductions not yet acknowledged by the Wrapper."""
        return self.store.outbox_length(tenant)

    # --- settling ----------------------------------------------------------------------------

    def settle(self, tenant: str, entries: list[OutboxEntry]) -> SettleReport:
        report = SettleReport()
        for i, entry in enumerate(entries):
            try:
                self.wrapper.consume_credits(tenant, entry.consume_body())
            except WrapperUnavailable as exc:
                logger.warning("tenant=%s settlement paused, Wrapper unavailable: %s", tenant, exc)
                report.unsettled += [e.entry_id for e in entries[i:]]
                break
            except WrapperNotFound as exc:
                self._reject(tenant, entry, f"the Wrapper refused the deduction: {exc}")
                report.rejected.append(entry.entry_id)
                continue
            except (WrapperError, KeyError, ValueError) as exc:
                logger.error("tenant=%s entry %s not settled: %s", tenant, entry.entry_id, exc)
                report.unsettled.append(entry.entry_id)
                continue
            self.ack(tenant, entry.entry_id)
            report.settled.append(entry.entry_id)
        return report

    def ack(self, tenant: str, entry_id: str) -> None:
        self.store.ack_outbox(tenant, entry_id)

    def _reject(self, tenant: str, entry: OutboxEntry, reason: str) -> None:
        logger.error("tenant=%s dead-lettering outbox entry %s: %s", tenant, entry.entry_id, reason)
        raw = ",".join(f"{k}={v}" for k, v in sorted(entry.fields.items()))
        self.store.dead_letter(reason, raw, channel="credit-outbox", tenant=tenant)
        self.ack(tenant, entry.entry_id)

    def drain(
        self,
        tenant: str,
        batch: int,
        *,
        entry_ids: list[str] | None = None,
        min_idle_ms: int | None = None,
    ) -> SettleReport:
        """One task's work: our retried entries, then (with `min_idle_ms`) dead settlers'
        entries, then new entries until none is left or the Wrapper stops answering."""
        report = SettleReport()
        if entry_ids:
            report.merge(self.settle(tenant, self.claim(tenant, entry_ids)))
            return report
        if min_idle_ms is not None:
            for _ in range(MAX_ROUNDS):
                claimed = self.claim_idle(tenant, min_idle_ms, batch)
                if not claimed:
                    break
                round_report = self.settle(tenant, claimed)
                report.merge(round_report)
                if round_report.unsettled:
                    return report
            self.forget_dead_consumers(tenant)
        for _ in range(MAX_ROUNDS):
            entries = self.read_new(tenant, batch)
            if not entries:
                return report
            round_report = self.settle(tenant, entries)
            report.merge(round_report)
            if round_report.unsettled:
                return report
        report.more = True
        return report

    def forget_dead_consumers(self, tenant: str) -> None:
        """Drop group members with nothing pending that have been idle for a day."""
        self.store.forget_idle_outbox_consumers(tenant, DEAD_CONSUMER_IDLE_MS)
