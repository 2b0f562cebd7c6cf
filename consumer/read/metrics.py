"""In-process read metrics: counters per data class and a latency histogram, flushed to Redis.

Recording is a few integer operations under an uncontended lock (no I/O, never a Redis round
trip per read). The background thread flushes every tenant's increments since the last flush
into each tenant's ``crm:{t}:metrics`` hash (one pipeline for all tenants), where
``publish_metrics`` aggregates every process's counters. Field names and arithmetic live in
``crmcache.read_metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crmcache import keyspace
from crmcache.keyspace import TenantKeys
from crmcache.read_metrics import (
    BUCKETS,
    CLASSES,
    FAMILIES,
    FAMILY_OF,
    OUTCOMES,
    bucket_of,
    counter_field,
    latency_field,
    latency_sum_field,
    summarize,
)

if TYPE_CHECKING:
    from consumer.read.connection import ReadCommands

logger = logging.getLogger(__name__)

HITS, MISSES, NEAR, STALE, DEGRADED, FETCHES, ERRORS = range(len(OUTCOMES))


class ReadMetrics:
    """Counters of one reader (one tenant in one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {c: [0] * len(OUTCOMES) for c in CLASSES}
        self._buckets: dict[str, list[int]] = {f: [0] * BUCKETS for f in FAMILIES}
        self._sums: dict[str, int] = dict.fromkeys(FAMILIES, 0)
        self._flushed: dict[str, int] = {}

    def record(
        self,
        data_class: str,
        hit: bool,
        elapsed_ns: int,
        *,
        near: bool = False,
        stale: bool = False,
        degraded: bool = False,
        fetches: int = 0,
        error: bool = False,
    ) -> None:
        family = FAMILY_OF[data_class]
        bucket = bucket_of(elapsed_ns)
        with self._lock:
            row = self._counts[data_class]
            row[HITS if hit else MISSES] += 1
            if near:
                row[NEAR] += 1
            if stale:
                row[STALE] += 1
            if degraded:
                row[DEGRADED] += 1
            if fetches:
                row[FETCHES] += fetches
            if error:
                row[ERRORS] += 1
            self._buckets[family][bucket] += 1
            self._sums[family] += elapsed_ns

    def record_near_hit(self, data_class: str, elapsed_ns: int) -> None:
        """The hot path's variant of ``record`` (a near-cache hit): fewer branches."""
        family = FAMILY_OF[data_class]
        bucket = bucket_of(elapsed_ns)
        with self._lock:
            row = self._counts[data_class]
            row[HITS] += 1
            row[NEAR] += 1
            self._buckets[family][bucket] += 1
            self._sums[family] += elapsed_ns

    def counts(self) -> dict[str, int]:
        """Every non-zero counter, by its Redis field name."""
        with self._lock:
            out = {
                counter_field(c, o): row[i]
                for c, row in self._counts.items()
                for i, o in enumerate(OUTCOMES)
                if row[i]
            }
            for family, buckets in self._buckets.items():
                out.update({latency_field(family, i): n for i, n in enumerate(buckets) if n})
                if self._sums[family]:
                    out[latency_sum_field(family)] = self._sums[family]
        return out

    def summary(self) -> dict[str, Any]:
        return summarize(self.counts())

    def pending(self) -> tuple[dict[str, int], dict[str, int]]:
        """(every counter now, its increment since the last successful flush, non-zero only)."""
        current = self.counts()
        deltas = {k: v - self._flushed.get(k, 0) for k, v in current.items()}
        return current, {k: v for k, v in deltas.items() if v}

    def mark_flushed(self, counts: dict[str, int]) -> None:
        self._flushed = counts

    def reset(self) -> None:
        """Start from zero (a forked child: the parent reports its own counts)."""
        self._lock = threading.Lock()
        self._counts = {c: [0] * len(OUTCOMES) for c in CLASSES}
        self._buckets = {f: [0] * BUCKETS for f in FAMILIES}
        self._sums = dict.fromkeys(FAMILIES, 0)
        self._flushed = {}


def flush_counters(redis: ReadCommands, tenants: Sequence[tuple[str, ReadMetrics]]) -> int:
    """HINCRBY every tenant's increments since its last successful flush into its
    ``crm:{t}:metrics`` hash, all in one round trip; returns the fields sent. Raises
    StoreUnavailable (the increments wait for the next flush) when Redis fails. Callers
    serialize flushes (a CRMCache holds one lock), or an increment could be sent twice."""
    rows: list[tuple[str, dict[str, int]]] = []
    sent: list[tuple[ReadMetrics, dict[str, int]]] = []
    names: list[str] = []
    for tenant, metrics in tenants:
        current, deltas = metrics.pending()
        if deltas:
            rows.append((TenantKeys.of(tenant).metrics, deltas))
            sent.append((metrics, current))
            names.append(tenant)
    if not rows:
        return 0
    redis.add_counters(rows, keyspace.METRICS_TENANTS, names)
    for metrics, current in sent:
        metrics.mark_flushed(current)
    return sum(len(deltas) for _, deltas in rows)
