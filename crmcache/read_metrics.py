"""Read-side metrics arithmetic: counter names, the latency histogram, hit rates, snapshots.

Pure functions shared by the readers (``consumer.read.metrics``) and the ``publish_metrics`` beat
task. Counters are flat ``{field: int}`` maps whose field names are also the fields of the
``crm:{t}:metrics`` hash the readers HINCRBY into.

What counts as what (per data class, one request is exactly one hit or one miss):

* **hit**: answered from a cache (near-cache, Redis, or the last-known-good copy) without
  asking the Wrapper; a cached "not configured" / 404 is a hit.
* **miss**: the cache had no usable answer: the Wrapper was asked (or waited for), or an error
  was raised (tenant not ready, Redis down with nothing to serve).
* **stale**: the answer was flagged stale (degraded or stale-if-error); **degraded**: answered
  while Redis was unreachable; **near**: hits served by the near-cache; **fetches**: upstream
  Wrapper calls; **errors**: requests that raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CRITICAL_CLASSES = ("credit-costs", "permissions")
REFERENCE_CLASSES = ("profile", "hierarchy", "credits")
CLASSES = CRITICAL_CLASSES + REFERENCE_CLASSES
OUTCOMES = ("hits", "misses", "near", "stale", "degraded", "fetches", "errors")
FAMILIES = ("critical", "reference")
FAMILY_OF = {c: "critical" for c in CRITICAL_CLASSES} | {c: "reference" for c in REFERENCE_CLASSES}

SUB_BUCKETS = 4
"""Latency buckets: 4 per power of two of nanoseconds, so a percentile is within 25 %."""
BUCKETS = 42 * SUB_BUCKETS
"""Up to 2**42 ns (73 min); slower samples land in the last bucket."""


def counter_field(data_class: str, outcome: str) -> str:
    return f"{data_class}:{outcome}"


def latency_field(family: str, bucket: int) -> str:
    return f"lat:{family}:{bucket}"


def latency_sum_field(family: str) -> str:
    return f"latsum:{family}"


def bucket_of(ns: int) -> int:
    """The histogram bucket of a duration in nanoseconds."""
    if ns < 4:
        return max(ns, 0)
    bits = ns.bit_length()
    return min((bits - 1) * SUB_BUCKETS + ((ns >> (bits - 3)) & 3), BUCKETS - 1)


def bucket_upper_ns(bucket: int) -> int:
    """The exclusive upper bound, in ns, of a bucket's durations."""
    if bucket < 2 * SUB_BUCKETS:
        return bucket + 1
    octave, sub = divmod(bucket, SUB_BUCKETS)
    return (1 << (octave - 2)) * (SUB_BUCKETS + sub + 1)


def percentile_ns(buckets: Sequence[int], q: float) -> int | None:
    """The q-quantile (0 < q <= 1) as its bucket's upper bound; None without samples."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = max(int(q * total + 0.999999), 1)
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return bucket_upper_ns(index)
    return bucket_upper_ns(len(buckets) - 1)


def latency_buckets(counts: Mapping[str, int], family: str) -> list[int]:
    prefix = f"lat:{family}:"
    buckets = [0] * BUCKETS
    for name, value in counts.items():
        if name.startswith(prefix):
            index = int(name[len(prefix) :])
            if 0 <= index < BUCKETS:
                buckets[index] += value
    return buckets


def _rate(hits: int, misses: int) -> float | None:
    total = hits + misses
    return hits / total if total else None


def summarize(counts: Mapping[str, int]) -> dict[str, Any]:
    """The seed's metric fields (camelCase) plus degraded/stale counts, per class and latency."""

    def total(classes: Sequence[str], outcome: str) -> int:
        return sum(counts.get(counter_field(c, outcome), 0) for c in classes)

    critical_hits, critical_misses = (
        total(CRITICAL_CLASSES, "hits"),
        total(CRITICAL_CLASSES, "misses"),
    )
    reference_hits, reference_misses = (
        total(REFERENCE_CLASSES, "hits"),
        total(REFERENCE_CLASSES, "misses"),
    )
    latency: dict[str, Any] = {}
    for family in FAMILIES:
        buckets = latency_buckets(counts, family)
        samples = sum(buckets)
        p50, p90, p99 = (percentile_ns(buckets, q) for q in (0.5, 0.9, 0.99))
        latency[family] = {
            "samples": samples,
            "meanUs": counts.get(latency_sum_field(family), 0) / samples / 1000
            if samples
            else None,
            "p50Us": p50 / 1000 if p50 is not None else None,
            "p90Us": p90 / 1000 if p90 is not None else None,
            "p99Us": p99 / 1000 if p99 is not None else None,
        }
    return {
        "criticalHitRate": _rate(critical_hits, critical_misses),
        "referenceHitRate": _rate(reference_hits, reference_misses),
        "overallHitRate": _rate(critical_hits + reference_hits, critical_misses + reference_misses),
        "totalRequests": critical_hits + critical_misses + reference_hits + reference_misses,
        "criticalHits": critical_hits,
        "criticalMisses": critical_misses,
        "referenceHits": reference_hits,
        "referenceMisses": reference_misses,
        "nearCacheHits": total(CLASSES, "near"),
        "staleResponses": total(CLASSES, "stale"),
        "degradedResponses": total(CLASSES, "degraded"),
        "upstreamFetches": total(CLASSES, "fetches"),
        "errors": total(CLASSES, "errors"),
        "byClass": {c: {o: counts.get(counter_field(c, o), 0) for o in OUTCOMES} for c in CLASSES},
        "latency": latency,
    }


def window(current: Mapping[str, int], previous: Mapping[str, int] | None) -> dict[str, int]:
    """Counts since ``previous``; all of ``current`` when there is none or the counters were
    reset (Redis lost them) since."""
    if not previous or any(current.get(k, 0) < v for k, v in previous.items()):
        return dict(current)
    return {k: v - previous.get(k, 0) for k, v in current.items()}


def build_snapshot(
    tenant: str,
    current: Mapping[str, int],
    previous: Mapping[str, int] | None,
    threshold: float,
    now_ms: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The snapshot publish_metrics stores and publishes, and the alert when the critical hit
    rate over the window since the previous snapshot is below ``threshold`` (None otherwise;
    a window without critical reads raises no alert)."""
    recent = summarize(window(current, previous))
    snapshot = {
        "type": "metrics",
        "tenant": tenant,
        "atMs": now_ms,
        "threshold": threshold,
        "window": recent,
        "totals": summarize(current),
        "counters": dict(current),
    }
    rate = recent["criticalHitRate"]
    if rate is None or rate >= threshold:
        return snapshot, None
    alert = {
        "type": "alert",
        "alert": "critical-hit-rate-below-threshold",
        "tenant": tenant,
        "atMs": now_ms,
        "criticalHitRate": rate,
        "threshold": threshold,
        "criticalHits": recent["criticalHits"],
        "criticalMisses": recent["criticalMisses"],
    }
    return snapshot, alert
