"""Per-process resources of a worker: built on first use, after the pool has forked."""

from __future__ import annotations

from functools import cache

from config.settings import Settings, get_settings
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
