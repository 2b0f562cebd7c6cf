"""The API's per-process resources: cache, Wrapper client, API keys, readers, Celery producer."""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.asyncio
from celery import Celery

from config.apikeys import ApiKeyRing
from config.celery import CREDITS_QUEUE, celery_config
from config.settings import Settings
from consumer.api.metrics import ApiMetrics
from consumer.api.readers import ReaderFactory, Readers
from crmcache import credits_low
from crmcache.errors import StoreUnavailable
from crmcache.holds import Hold
from crmcache.keyspace import TenantKeys, lua_source
from crmcache.lead_store import LeadStore
from crmcache.redis_client import make_async_redis, make_redis
from crmcache.store import Store, translate_errors
from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)


class SettlementQueue:
    """Enqueues ``crmcache.settle_credits`` by name (the API imports no task code)."""

    def __init__(self, settings: Settings) -> None:
        self.app = Celery("crmcache-api")
        self.app.conf.update(celery_config(settings))

    def enqueue(self, tenant: str) -> bool:
        """Best effort and never blocking for long: the deduction is already committed, and
        the beat sweep settles whatever a lost enqueue left behind."""
        try:
            self.app.send_task(
                "crmcache.settle_credits",
                args=(tenant,),
                queue=CREDITS_QUEUE,
                routing_key=CREDITS_QUEUE,
                retry=False,
            )
        except Exception as exc:  # kombu raises many types; none may fail the request
            logger.warning("tenant=%s could not enqueue settle_credits: %r", tenant, exc)
            return False
        return True

    def close(self) -> None:
        self.app.close()


class ApiService:
    """Everything a request needs, built once per process by ``create_app``."""

    def __init__(self, settings: Settings, reader_factory: ReaderFactory | None = None) -> None:
        self.settings = settings
        self.keys = ApiKeyRing.from_config(settings.api_keys.get_secret_value())
        self.redis = make_redis(settings.cache_url, socket_timeout=settings.redis_socket_timeout)
        self.store = Store(self.redis)
        self.wrapper = WrapperClient(settings)
        self.readers = Readers(settings, reader_factory)
        self.settlement = SettlementQueue(settings)
        self.lead_store = LeadStore(settings.database_url.get_secret_value())
        self.metrics = ApiMetrics(self.readers)
        self.async_redis: redis.asyncio.Redis | None = None
        """For the event loop's own reads; made in the app's lifespan (bound to its loop)."""
        self._balance_peek: Any = None

    async def start(self) -> None:
        self.async_redis = make_async_redis(
            self.settings.cache_url, socket_timeout=self.settings.reader_timeout_ms / 1000
        )
        self._balance_peek = self.async_redis.register_script(lua_source("balance_peek"))

    async def stop(self) -> None:
        if self.async_redis is not None:
            await self.async_redis.aclose()
            self.async_redis = None

    async def cached_balance(
        self, tenant: str, user_id: str
    ) -> tuple[bytes, int, bytes | None] | None:
        """(balance text, meta version, meta epoch), read atomically without blocking the loop;
        None when not cached, or when Redis fails (the caller then asks the reader, which
        knows the degraded rules)."""
        if self._balance_peek is None:
            return None
        keys = TenantKeys.of(tenant)
        try:
            raw, version, epoch = await self._balance_peek(keys=[keys.balance(user_id), keys.meta])
        except (redis.ConnectionError, redis.TimeoutError):
            return None
        if raw is None:
            return None
        return raw, int(version), epoch

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self.keys.tenants()))

    def settle_soon(self, tenant: str) -> None:
        if self.settlement.enqueue(tenant):
            return
        # Let the next deduction try again instead of waiting for the flag to expire.
        try:
            with translate_errors():
                self.redis.delete(TenantKeys.of(tenant).settle_scheduled)
        except StoreUnavailable:
            pass

    def after_charge(self, tenant: str, hold: Hold | None, settle_now: bool) -> None:
        """Enqueue settlement when asked; count and announce a balance crossing below the
        tenant's low-balance threshold."""
        if settle_now:
            self.settle_soon(tenant)
        if hold is None or hold.replayed:
            return
        threshold = self.settings.low_balance_threshold(tenant)
        before, after = hold.available_before, hold.available
        if credits_low.notice(self.store, tenant, hold.user_id, before, after, threshold):
            self.metrics.credits_low.labels(tenant).inc()

    def redis_ok(self) -> bool:
        try:
            with translate_errors():
                return bool(self.redis.ping())
        except StoreUnavailable:
            return False

    def close(self) -> None:
        self.readers.close()
        self.settlement.close()
        self.wrapper.close()
        self.lead_store.close()
        self.redis.close()
