"""Prometheus exposition of the readers' metrics, usable from any application.

``ReaderCollector`` is a custom collector: register it once and every scrape reports every
tenant held by every open client of the process (or the views given), labelled by tenant::

    from prometheus_client import REGISTRY
    from consumer.read.prometheus import ReaderCollector
    REGISTRY.register(ReaderCollector())

``exposition()`` returns the text format directly (for a plain HTTP handler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from consumer.read.cache import live_tenants
from consumer.read.view import TenantView
from crmcache.read_metrics import (
    CLASSES,
    FAMILIES,
    OUTCOMES,
    SUB_BUCKETS,
    bucket_upper_ns,
    counter_field,
    latency_buckets,
    latency_sum_field,
)

OUTCOME_HELP = {
    "hits": "answered from a cache without asking the Wrapper",
    "misses": "the cache had no usable answer",
    "near": "hits served by the in-process near-cache",
    "stale": "answers flagged stale",
    "degraded": "answers given while Redis was unreachable",
    "fetches": "upstream Wrapper calls",
    "errors": "reads that raised",
}


class ReaderCollector(Collector):
    """Counters, cache sizes, hit rates and latency histograms of TenantView instances."""

    def __init__(self, consumers: Callable[[], Iterable[TenantView]] = live_tenants) -> None:
        self._consumers = consumers

    def collect(self) -> Iterator[Metric]:
        consumers = list(self._consumers())
        counters = {
            o: CounterMetricFamily(
                f"crmcache_read_{o}", f"Reads {OUTCOME_HELP[o]}", labels=["tenant", "data_class"]
            )
            for o in OUTCOMES
        }
        latency = HistogramMetricFamily(
            "crmcache_read_latency_seconds",
            "Read latency, critical (costs, permissions) and reference (profiles, ...)",
            labels=["tenant", "family"],
        )
        sizes = GaugeMetricFamily(
            "crmcache_read_cache_entries",
            "Entries held in this process",
            labels=["tenant", "cache"],
        )
        rates = GaugeMetricFamily(
            "crmcache_read_hit_rate",
            "Hit rate since start (NaN without reads)",
            labels=["tenant", "family"],
        )
        degraded = GaugeMetricFamily(
            "crmcache_read_degraded", "1 while Redis is unreachable", labels=["tenant"]
        )
        for consumer in consumers:
            tenant = consumer.tenant
            counts = consumer.metrics_counts()
            for outcome, family in counters.items():
                for data_class in CLASSES:
                    family.add_metric(
                        [tenant, data_class], counts.get(counter_field(data_class, outcome), 0)
                    )
            for name in FAMILIES:
                latency.add_metric(
                    [tenant, name],
                    _cumulative_buckets(latency_buckets(counts, name)),
                    counts.get(latency_sum_field(name), 0) / 1e9,
                )
            summary = consumer.get_metrics()
            sizes.add_metric([tenant, "critical"], summary["criticalCacheSize"])
            sizes.add_metric([tenant, "reference"], summary["referenceCacheSize"])
            for name, field in (("critical", "criticalHitRate"), ("reference", "referenceHitRate")):
                value = summary[field]
                rates.add_metric([tenant, name], float("nan") if value is None else value)
            degraded.add_metric([tenant], 1.0 if summary["degraded"] else 0.0)
        yield from counters.values()
        yield from (latency, sizes, rates, degraded)


def _cumulative_buckets(buckets: list[int]) -> list[tuple[str, float]]:
    """Our 4-per-octave buckets folded into one bucket per power of two (exact: octave
    boundaries are bucket boundaries), from 1 µs to ~69 s, plus +Inf."""
    out: list[tuple[str, float]] = []
    seen = 0
    bound = 0
    for index, count in enumerate(buckets):
        seen += count
        if index % SUB_BUCKETS == SUB_BUCKETS - 1:
            upper = bucket_upper_ns(index)
            if 1_000 <= upper <= 70_000_000_000 and upper > bound:
                out.append((f"{upper / 1e9:.9g}", float(seen)))
                bound = upper
    out.append(("+Inf", float(sum(buckets))))
    return out


def exposition(consumers: Callable[[], Iterable[TenantView]] = live_tenants) -> bytes:
    """The text exposition format of the given (default: every live) consumers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReaderCollector(consumers))
    return generate_latest(registry)
