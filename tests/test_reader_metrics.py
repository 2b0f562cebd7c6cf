"""Read metrics: exact counts for a scripted sequence, the flush to Redis, the Prometheus
exposition, the latency histogram, and the publish_metrics beat task's alert."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from consumer.read.prometheus import ReaderCollector, exposition
from crmcache.errors import TenantNotReady
from crmcache.keyspace import TenantKeys
from crmcache.read_metrics import bucket_of, bucket_upper_ns, build_snapshot, counter_field
from tests.conftest import wait_until
from tests.reader_helpers import preload, reader

EXPECTED_CLASSES = {
    "credit-costs": {"hits": 2, "misses": 1, "near": 1, "errors": 1},
    "permissions": {"hits": 2, "misses": 0, "near": 1, "errors": 0},
    "profile": {"hits": 1, "misses": 2, "fetches": 2},
    "hierarchy": {"hits": 0, "misses": 0, "fetches": 0},
    "credits": {"hits": 1, "misses": 1, "fetches": 1},
}


def scripted_reads(crm: Any, store: Any, settings: Any, tenant: str = "acme") -> None:
    """1 critical miss (not loaded), 4 critical hits (2 near-cache), 2 reference hits and 3
    reference misses (3 upstream fetches)."""
    with pytest.raises(TenantNotReady):
        crm.get_credit_cost("crm.leads.create")
    preload(store, settings, tenant)
    crm.get_credit_cost("crm.leads.create")
    crm.get_credit_cost("crm.leads.create")
    crm.check_permission("user-456", "crm.leads.create")
    crm.check_permission("user-456", "crm.leads.create")
    crm.get_user_profile("user-456")
    crm.get_user_profile("user-456")
    crm.get_user_profile("nobody")
    crm.get_user_credits("user-456")
    crm.get_user_credits("user-456")


def test_get_metrics_match_a_scripted_sequence_exactly(
    store: Any, wrapper: Any, settings: Any
) -> None:
    with reader(settings) as crm:
        # When a known sequence of hits and misses is read
        scripted_reads(crm, store, settings)
        metrics = crm.get_metrics()
    # Then every figure is exactly what the sequence implies
    assert metrics["criticalHits"] == 4 and metrics["criticalMisses"] == 1
    assert metrics["referenceHits"] == 2 and metrics["referenceMisses"] == 3
    assert metrics["criticalHitRate"] == 0.8
    assert metrics["referenceHitRate"] == 0.4
    assert metrics["overallHitRate"] == 0.6
    assert metrics["totalRequests"] == 10
    assert metrics["nearCacheHits"] == 2
    assert metrics["upstreamFetches"] == 3
    assert metrics["errors"] == 1
    assert metrics["staleResponses"] == 0 and metrics["degradedResponses"] == 0
    # near-cache: cost, user-456, role sales; local reference copies: 2 profiles, 1 balance
    assert (metrics["criticalCacheSize"], metrics["referenceCacheSize"]) == (3, 3)
    assert metrics["cacheSize"] == 6
    for data_class, expected in EXPECTED_CLASSES.items():
        counts = metrics["byClass"][data_class]
        assert {k: counts[k] for k in expected} == expected, data_class
    assert metrics["latency"]["critical"]["samples"] == 5
    assert metrics["latency"]["reference"]["samples"] == 5


def test_counters_are_flushed_to_redis_once(
    store: Any, wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    keys = TenantKeys.of("acme")
    with reader(settings) as crm:
        scripted_reads(crm, store, settings)
        # When the counters are flushed, twice, then once more after one more read
        crm.flush_metrics()
        first = {k.decode(): int(v) for k, v in r.hgetall(keys.metrics).items()}
        assert crm.flush_metrics() == 0
        crm.get_credit_cost("crm.leads.create")
        crm.flush_metrics()
        second = {k.decode(): int(v) for k, v in r.hgetall(keys.metrics).items()}
    # Then Redis holds exactly the process's counters, never counted twice
    assert first[counter_field("credit-costs", "hits")] == 2
    assert first[counter_field("profile", "fetches")] == 2
    assert second[counter_field("credit-costs", "hits")] == 3
    assert r.sismember("crm:metrics:tenants", "acme")


def test_prometheus_exposition_reports_the_same_counts(
    store: Any, wrapper: Any, settings: Any
) -> None:
    with reader(settings) as crm:
        scripted_reads(crm, store, settings)
        # When the collector is scraped (registered in any application's registry)
        registry = CollectorRegistry()
        registry.register(ReaderCollector(lambda: [crm]))
        labels = {"tenant": "acme", "data_class": "credit-costs"}
        # Then it reports the reader's counters, cache sizes and latency histogram
        assert registry.get_sample_value("crmcache_read_hits_total", labels) == 2
        assert registry.get_sample_value("crmcache_read_misses_total", labels) == 1
        assert (
            registry.get_sample_value(
                "crmcache_read_cache_entries", {"tenant": "acme", "cache": "critical"}
            )
            == 3
        )
        count = registry.get_sample_value(
            "crmcache_read_latency_seconds_count", {"tenant": "acme", "family": "critical"}
        )
        assert count == 5
        assert b'crmcache_read_hits_total{data_class="permissions",tenant="acme"} 2.0' in (
            exposition(lambda: [crm])
        )


@given(ns=st.integers(min_value=1, max_value=2**40))
def test_latency_buckets_bound_a_duration_within_25_percent(ns: int) -> None:
    # Given any duration, when bucketed, then its bucket's upper bound is just above it
    upper = bucket_upper_ns(bucket_of(ns))
    assert ns < upper <= ns * 1.25 + 1


@pytest.mark.parametrize(
    ("hits", "misses", "alert"),
    [(9, 1, True), (19, 1, False), (20, 0, False), (0, 0, False), (0, 3, True)],
)
def test_snapshot_alerts_only_below_the_threshold(hits: int, misses: int, alert: bool) -> None:
    # Given counters since the previous snapshot
    previous = {counter_field("credit-costs", "hits"): 100}
    current = {
        counter_field("credit-costs", "hits"): 100 + hits,
        counter_field("permissions", "misses"): misses,
    }
    # When a snapshot is built with the 0.95 threshold
    snapshot, raised = build_snapshot("acme", current, previous, 0.95, 1)
    # Then the window is the difference, and an alert is raised only below the threshold
    assert snapshot["window"]["criticalHits"] == hits
    assert (raised is not None) is alert


def test_snapshot_window_restarts_when_counters_were_reset() -> None:
    # Given a previous snapshot with more than the counters now hold (Redis lost them)
    previous = {counter_field("credit-costs", "hits"): 500}
    current = {counter_field("credit-costs", "hits"): 3}
    # Then the window is the current counters, not a negative difference
    snapshot, _ = build_snapshot("acme", current, previous, 0.95, 1)
    assert snapshot["window"]["criticalHits"] == 3


def collect(pubsub: Any, channels: set[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Messages per channel until every channel has a snapshot, then a little longer."""
    got: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
    deadline = time.monotonic() + timeout
    settle: float | None = None
    while time.monotonic() < (settle or deadline):
        message = pubsub.get_message(timeout=0.05)
        if message and message["type"] == "message":
            got[message["channel"].decode()].append(json.loads(message["data"]))
        if settle is None and all(any(m["type"] == "metrics" for m in got[c]) for c in channels):
            settle = time.monotonic() + 0.3
    return got


def test_beat_alert_fires_below_the_threshold_and_not_above(
    store: Any, wrapper: Any, settings: Any, worker: Any, r: redis.Redis
) -> None:
    from tasks.metrics import publish_metrics

    # Given acme's readers at a 0.90 critical hit rate and globex's at exactly 0.95
    with reader(settings, tenant="acme") as acme, reader(settings, tenant="globex") as globex:
        for crm, tenant, hits in ((acme, "acme", 9), (globex, "globex", 19)):
            with pytest.raises(TenantNotReady):
                crm.get_credit_cost("crm.leads.create")
            preload(store, settings, tenant)
            for _ in range(hits):
                crm.get_credit_cost("crm.leads.create")
            crm.flush_metrics()
    channels = {"crm:acme:metrics", "crm:globex:metrics"}
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(*channels)
        wait_until(lambda: pubsub.get_message(timeout=0.05) is not None, what="subscribed")
        # When the beat task runs on the worker
        publish_metrics.delay(guard=False)
        got = collect(pubsub, channels, timeout=10)
    finally:
        pubsub.close()
    acme_types = [m["type"] for m in got["crm:acme:metrics"]]
    globex_types = [m["type"] for m in got["crm:globex:metrics"]]
    # Then both snapshots are published; only acme (below 0.95) gets an alert
    assert acme_types == ["metrics", "alert"]
    assert globex_types == ["metrics"]
    assert got["crm:acme:metrics"][1]["criticalHitRate"] == 0.9
    assert got["crm:globex:metrics"][0]["window"]["criticalHitRate"] == 0.95
    assert r.exists(TenantKeys.of("acme").metrics_snapshot)


def test_two_beats_publish_once_per_interval(
    store: Any, wrapper: Any, settings: Any, worker: Any, r: redis.Redis
) -> None:
    from tasks.metrics import publish_metrics

    with reader(settings) as crm:
        preload(store, settings)
        crm.get_credit_cost("crm.leads.create")
        crm.flush_metrics()
    pubsub = r.pubsub()
    try:
        pubsub.subscribe("crm:acme:metrics")
        wait_until(lambda: pubsub.get_message(timeout=0.05) is not None, what="subscribed")
        # When two beats send the task for the same interval
        publish_metrics.delay()
        publish_metrics.delay()
        got = collect(pubsub, {"crm:acme:metrics"}, timeout=10)
        time.sleep(0.5)
        late = collect(pubsub, {"crm:acme:metrics"}, timeout=0.3)
    finally:
        pubsub.close()
    # Then one snapshot is published
    assert [m["type"] for m in got["crm:acme:metrics"] + late["crm:acme:metrics"]] == ["metrics"]
