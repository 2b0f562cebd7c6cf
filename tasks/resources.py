"""Per-process resources of a worker: built on first use, after the pool has forked."""

from __future__ import annotations

from functools import cache

from config.settings import Settings, get_settings
from crmcache.lead_store import LeadStore
from crmcache.preload_runs import WrapperSlots
from crmcache.reconcile import Reconciler
from crmcache.redis_client import shared_redis
from crmcache.settlement import Settler
from crmcache.store import Store
from crmcache.wrapper import WrapperClient


def settings() -> Settings:
    return get_settings()


@cache
def store() -> Store:
    return Store(shared_redis(get_settings()))


@cache
def wrapper() -> WrapperClient:
    return WrapperClient(get_settings())


@cache
def settler() -> Settler:
    return Settler(store(), wrapper())


@cache
def wrapper_slots() -> WrapperSlots:
    """The fleet-wide bound on preloads asking the Wrapper at once; a slot's lease outlives
    the task's time limit, so only a killed worker's slot ever expires."""
    settings = get_settings()
    return WrapperSlots(
        store(), settings.preload_concurrency, (settings.task_time_limit + 5) * 1000
    )


@cache
def lead_store() -> LeadStore:
    return LeadStore(get_settings().database_url.get_secret_value())


@cache
def reconciler() -> Reconciler:
    settings = get_settings()
    return Reconciler(
        store(),
        wrapper(),
        lead_store(),
        timeout_s=settings.hold_timeout,
        ttl_s=settings.idempotency_ttl,
    )
