"""The credit outbox stream's commands (``crm:{t}:credit-outbox``, consumer group ``settlers``):
what ``settlement`` reads, claims, acknowledges and forgets. Entries come back as
(entry id, fields) text pairs; a missing stream or group reads as empty."""

from __future__ import annotations

from typing import Any

import redis

from crmcache.keyspace import OUTBOX_GROUP, TenantKeys
from crmcache.store_base import StoreBase, text, text_map, translate_errors

OutboxRecord = tuple[str, dict[str, str]]


def _records(raw: Any) -> list[OutboxRecord]:
    # XCLAIM answers nothing useful for an entry deleted meanwhile: those are left out.
    return [(text(entry_id), text_map(fields)) for entry_id, fields in raw if fields]


class OutboxCommands(StoreBase):
    def ensure_outbox_group(self, tenant: str) -> None:
        with translate_errors():
            try:
                self.redis.xgroup_create(
                    TenantKeys.of(tenant).credit_outbox, OUTBOX_GROUP, id="0", mkstream=True
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read_outbox(self, tenant: str, consumer: str, count: int) -> list[OutboxRecord]:
        """Entries no settler has seen yet; they become pending under `consumer`."""
        outbox = TenantKeys.of(tenant).credit_outbox
        for _ in range(2):
            try:
                with translate_errors():
                    reply: Any = self.redis.xreadgroup(
                        OUTBOX_GROUP, consumer, {outbox: ">"}, count=count
                    )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.ensure_outbox_group(tenant)
                continue
            return _records(reply[0][1]) if reply else []
        return []

    def claim_outbox(self, tenant: str, consumer: str, entry_ids: list[str]) -> list[OutboxRecord]:
        """Take these pending entries over for `consumer`; settled ones are skipped."""
        ids: list[int | bytes | str | memoryview] = list(entry_ids)
        with translate_errors():
            raw = self.redis.xclaim(
                TenantKeys.of(tenant).credit_outbox,
                OUTBOX_GROUP,
                consumer,
                min_idle_time=0,
                message_ids=ids,
            )
        return _records(raw)

    def claim_idle_outbox(
        self, tenant: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[OutboxRecord]:
        """Take over entries pending longer than `min_idle_ms` (XAUTOCLAIM)."""
        outbox = TenantKeys.of(tenant).credit_outbox
        try:
            with translate_errors():
                reply = self.redis.xautoclaim(
                    outbox, OUTBOX_GROUP, consumer, min_idle_ms, "0-0", count=count
                )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return []
            raise
        return _records(reply[1])

    def outbox_length(self, tenant: str) -> int:
        with translate_errors():
            return int(self.redis.xlen(TenantKeys.of(tenant).credit_outbox))

    def ack_outbox(self, tenant: str, entry_id: str) -> None:
        """Acknowledge and delete one entry (XACK + XDEL in one MULTI)."""
        outbox = TenantKeys.of(tenant).credit_outbox
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.xack(outbox, OUTBOX_GROUP, entry_id)
            pipe.xdel(outbox, entry_id)
            pipe.execute()

    def forget_idle_outbox_consumers(self, tenant: str, idle_ms: int) -> None:
        """Drop group members with nothing pending, idle for longer than `idle_ms`."""
        outbox = TenantKeys.of(tenant).credit_outbox
        try:
            with translate_errors():
                for consumer in self.redis.xinfo_consumers(outbox, OUTBOX_GROUP):
                    if consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                        self.redis.xgroup_delconsumer(outbox, OUTBOX_GROUP, text(consumer["name"]))
        except redis.ResponseError:
            return  # no outbox or no group yet: nobody to forget
