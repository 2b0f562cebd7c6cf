"""The store's bookkeeping commands: preload runs and the Wrapper preload slots, the metrics
snapshots, dead letters and the beat guard. Key names come from ``keyspace``."""

from __future__ import annotations

from crmcache import keyspace
from crmcache.keyspace import TenantKeys
from crmcache.store_base import StoreBase, now_ms, text, text_map, translate_errors


class OpsCommands(StoreBase):
    # --- preload runs -------------------------------------------------------------------------

    def start_preload_run(self, run: dict[str, str | int]) -> None:
        """Replace the record of the previous preload run with `run` (one MULTI)."""
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(keyspace.PRELOAD_RUN, keyspace.PRELOAD_FAILED)
            pipe.hset(keyspace.PRELOAD_RUN, mapping=run)  # type: ignore[arg-type]
            pipe.execute()

    def preload_run(self) -> tuple[dict[str, str], dict[str, str]]:
        """The latest run's record and its failures (tenant -> reason), as text."""
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keyspace.PRELOAD_RUN)
            pipe.hgetall(keyspace.PRELOAD_FAILED)
            run_raw, failed_raw = pipe.execute()
        return text_map(run_raw), text_map(failed_raw)

    def release_preload_slot(self, token: str) -> None:
        with translate_errors():
            self.redis.zrem(keyspace.PRELOAD_SLOTS, token)

    def preload_slot_holders(self) -> int:
        """Holders of a Wrapper preload slot whose lease has not ended."""
        with translate_errors():
            self.redis.zremrangebyscore(keyspace.PRELOAD_SLOTS, "-inf", now_ms())
            return int(self.redis.zcard(keyspace.PRELOAD_SLOTS))

    # --- metrics ------------------------------------------------------------------------------

    def metrics_tenants(self) -> list[str]:
        """Tenants whose readers ever flushed counters (``crm:metrics:tenants``), unchecked."""
        with translate_errors():
            members = self.redis.smembers(keyspace.METRICS_TENANTS)
        return [text(m) for m in members]

    def metrics_counters(self, tenant: str) -> tuple[dict[str, int], bytes | None]:
        """The tenant's flushed counters and its previous snapshot (raw JSON, or None)."""
        keys = TenantKeys.of(tenant)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.metrics)
            pipe.get(keys.metrics_snapshot)
            raw_counts, raw_previous = pipe.execute()
        return {text(k): int(v) for k, v in raw_counts.items()}, raw_previous

    def store_metrics_snapshot(self, tenant: str, snapshot: str, messages: list[str]) -> None:
        """Keep `snapshot` as the tenant's latest and publish `messages` on its metrics channel."""
        keys = TenantKeys.of(tenant)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(keys.metrics_snapshot, snapshot)
            for message in messages:
                pipe.publish(keys.metrics_channel, message)
            pipe.execute()

    # --- guards, dead letters -----------------------------------------------------------------

    def claim_run(self, job: str, ttl_s: int) -> bool:
        """True for the first caller of `job` within `ttl_s` seconds: a beat guard (SET NX EX),
        so that a second beat (two replicas, a restart) does nothing extra."""
        with translate_errors():
            return bool(self.redis.set(keyspace.schedule_guard(job), now_ms(), nx=True, ex=ttl_s))

    def dead_letter(
        self,
        reason: str,
        raw: bytes | str,
        *,
        channel: str = "",
        tenant: str | None = None,
        maxlen: int = 100_000,
    ) -> None:
        """Keep a rejected message with its reason (bounded stream), and count it."""
        raw_bytes = raw.encode() if isinstance(raw, str) else raw
        entry = {
            "reason": reason[:1000],
            "channel": channel[:300],
            "tenant": tenant or "",
            "size": len(raw_bytes),
            "raw": raw_bytes[: 1024 * 1024],
            "at-ms": now_ms(),
        }
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(keyspace.DEAD_LETTERS, entry, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.incr(keyspace.DEAD_LETTER_COUNT)
            pipe.execute()
