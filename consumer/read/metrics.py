"""In-process read metrics: counters per data class and a latency histogram, flushed to Redis.

Recording is a few integer operations under an uncontended lock (no I/O, never a Redis round
trip per read). The background thread flushes every tenant's increments since the last flush
into each tenant's ``crm:{t}:metrics`` hash (one pipeline for all tenants), where
``publish_metrics`` aggregates every process's counters. Field names and arithmetic live in
``crmcache.read_metrics``.
"""

from __future__ import annotations

import logging
import os
import threading
from array import array
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
_ROW = {c: i * len(OUTCOMES) for i, c in enumerate(CLASSES)}
"""Offset of each data class's outcome counters in the flat array."""
_LATENCY = len(CLASSES) * len(OUTCOMES)
_FAMILY_ROW = {c: _LATENCY + FAMILIES.index(f) * BUCKETS for c, f in FAMILY_OF.items()}
"""Offset of each data class's latency buckets (those of its family)."""
_SUMS = _LATENCY + len(FAMILIES) * BUCKETS
_SUM_OF = {c: _SUMS + FAMILIES.index(f) for c, f in FAMILY_OF.items()}
_SIZE = _SUMS + len(FAMILIES)


_lock = threading.Lock()
"""One lock for every tenant's counters: held for a few increments, and one hot cache line
instead of a cold one per tenant."""


class ReadMetrics:
    """Counters of one reader (one tenant in one process), in one flat array of machine
    integers: a near-cache hit touches three of its words, not a dozen scattered objects (a
    process serving a thousand tenants keeps its hot path in the CPU caches that way)."""

    __slots__ = ("_values", "_flushed")

    def __init__(self) -> None:
        self._values = array("q", bytes(8 * _SIZE))
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
        row = _ROW[data_class]
        bucket = _FAMILY_ROW[data_class] + bucket_of(elapsed_ns)
        values = self._values
        with _lock:
            values[row + (HITS if hit else MISSES)] += 1
            if near:
                values[row + NEAR] += 1
            if stale:
                values[row + STALE] += 1
            if degraded:
                values[row + DEGRADED] += 1
            if fetches:
                values[row + FETCHES] += fetches
            if error:
                values[row + ERRORS] += 1
            values[bucket] += 1
            values[_SUM_OF[data_class]] += elapsed_ns

    def record_near_hit(self, data_class: str, elapsed_ns: int) -> None:
        """The hot path's variant of ``record`` (a near-cache hit): fewer branches."""
        row = _ROW[data_class]
        bucket = _FAMILY_ROW[data_class] + bucket_of(elapsed_ns)
        values = self._values
        with _lock:
            values[row + HITS] += 1
            values[row + NEAR] += 1
            values[bucket] += 1
            values[_SUM_OF[data_class]] += elapsed_ns

    def reads(self) -> int:
        """Every read counted so far (each is one hit or one miss)."""
        values = self._values
        return sum(values[row + HITS] + values[row + MISSES] for row in _ROW.values())

    def counts(self) -> dict[str, int]:
        """Every non-zero counter, by its Redis field name."""
        with _lock:
            values = self._values.tolist()
        out = {
            counter_field(c, o): values[_ROW[c] + i]
            for c in CLASSES
            for i, o in enumerate(OUTCOMES)
            if values[_ROW[c] + i]
        }
        for f, family in enumerate(FAMILIES):
            start = _LATENCY + f * BUCKETS
            buckets = values[start : start + BUCKETS]
            out.update({latency_field(family, i): n for i, n in enumerate(buckets) if n})
            if values[_SUMS + f]:
                out[latency_sum_field(family)] = values[_SUMS + f]
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
        self._values = array("q", bytes(8 * _SIZE))
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


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held at the fork


os.register_at_fork(after_in_child=_reset_after_fork)
