"""The reconciler: finishes what a crashed process left between Redis and the leads database.

Run by the beat task ``crmcache.reconcile_credits`` for every tenant with credits, it

* voids every hold past its deadline (a user nobody touches any more keeps none), and
* decides each overdue hold that waits on a lead: the lead exists -> commit its charge; it does
  not -> write a tombstone for the lead id first (so the lead can never be written later),
  then void the hold;
* confirms the charge of every lead written longer than a hold's timeout ago whose charge is
  not marked in the database: the hold still open -> commit; committed -> mark; gone (Redis
  lost it) or given back -> charge the lead directly (``credits.deduct``, idempotent on
  ``lead:<leadId>``), so that a lead never stays without its charge.

Every step is idempotent: a second reconciler, or a rerun after a crash, changes nothing more.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from crmcache import credits, holds
from crmcache.errors import HoldClosed, HoldNotFound, InsufficientCredits
from crmcache.lead_store import Lead, LeadStore
from crmcache.leads import LEAD_OPERATION
from crmcache.store import Store
from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

CHARGE_GRACE_MS = 10_000
"""How much older than a hold's timeout a lead must be before its charge is checked: an API
process between its insert and its commit takes milliseconds, not this."""


@dataclass
class ReconcileReport:
    users_swept: int = 0
    committed: int = 0
    voided: int = 0
    marked: int = 0
    charged_directly: int = 0
    unpaid: list[str] = field(default_factory=list)
    """Leads whose charge could not be taken (the user's credits ran out meanwhile)."""
    settle: bool = False
    """Some commit asks for a settle task."""

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "unpaid": len(self.unpaid)}


@dataclass
class Reconciler:
    store: Store
    wrapper: WrapperClient
    lead_store: LeadStore
    _: KW_ONLY
    timeout_s: float
    """A hold's timeout (CRM_HOLD_TIMEOUT): a lead older than it by CHARGE_GRACE_MS is checked."""
    ttl_s: int
    """How long a direct charge's idempotency record is kept."""

    def reconcile(self, tenant: str, limit: int = 1000) -> ReconcileReport:
        report = ReconcileReport()
        for user_id in holds.due_users(self.store, tenant, limit):
            report.users_swept += 1
            for waiting in holds.sweep(self.store, tenant, user_id):
                self._decide(tenant, waiting, report)
        cutoff = int(time.time() * 1000 - self.timeout_s * 1000 - CHARGE_GRACE_MS)
        for lead in self.lead_store.uncharged(tenant, cutoff, limit):
            self._confirm_charge(lead, report)
        return report

    def _decide(self, tenant: str, waiting: holds.Waiting, report: ReconcileReport) -> None:
        """An overdue hold waiting on a lead: the database's primary key decides."""
        hold_id, lead_id = waiting.hold_id, waiting.result_ref
        if self.lead_store.tombstone(tenant, lead_id, hold_id):
            holds.void(self.store, tenant, hold_id, ttl_s=self.ttl_s, record=waiting.record)
            report.voided += 1
            logger.info("tenant=%s hold %s voided: lead %s never written", tenant, hold_id, lead_id)
            return
        try:
            done = holds.commit(
                self.store, tenant, hold_id, lead_id, ttl_s=self.ttl_s, record=waiting.record
            )
        except (HoldClosed, HoldNotFound) as exc:
            # Voided by hand meanwhile: the lead's charge check charges it directly.
            logger.warning(
                "tenant=%s lead %s exists, its hold %s: %s", tenant, lead_id, hold_id, exc
            )
            return
        report.committed += 1
        report.settle = report.settle or done.settle_now
        self.lead_store.mark_charged(tenant, lead_id)
        report.marked += 1

    def _confirm_charge(self, lead: Lead, report: ReconcileReport) -> None:
        try:
            state = holds.hold_status(self.store, lead.tenant, lead.hold_id, ttl_s=self.ttl_s)[
                "state"
            ]
        except HoldNotFound:
            state = "gone"
        if state == "held":
            try:
                done = holds.commit(
                    self.store, lead.tenant, lead.hold_id, lead.lead_id, ttl_s=self.ttl_s
                )
            except HoldClosed as closed:
                state = closed.state
            else:
                report.committed += 1
                report.settle = report.settle or done.settle_now
                state = "committed"
        if state != "committed" and not self._charge_directly(lead, state, report):
            return
        self.lead_store.mark_charged(lead.tenant, lead.lead_id)
        report.marked += 1

    def _charge_directly(self, lead: Lead, state: str, report: ReconcileReport) -> bool:
        logger.warning(
            "tenant=%s lead %s exists but its hold %s is %s: charging it directly",
            lead.tenant,
            lead.lead_id,
            lead.hold_id,
            state,
        )
        try:
            deduction = credits.deduct(
                self.store,
                self.wrapper,
                lead.tenant,
                user_id=lead.user_id,
                operation=LEAD_OPERATION,
                amount=lead.credits,
                idempotency_key=f"lead:{lead.lead_id}",
                ttl_s=self.ttl_s,
            )
        except InsufficientCredits:
            logger.error(
                "tenant=%s lead %s cannot be charged: no credits", lead.tenant, lead.lead_id
            )
            report.unpaid.append(lead.lead_id)
            return False
        report.charged_directly += 1
        report.settle = report.settle or deduction.settle_now
        return True
