"""The API's per-process resources: cache, Wrapper client, API keys, readers, Celery producer."""

from __future__ import annotations

import logging

from celery import Celery

from config.apikeys import ApiKeyRing
from config.celery import CREDITS_QUEUE, celery_config
from config.settings import Settings
from consumer.api.metrics import ApiMetrics
from consumer.api.readers import ReaderFactory, Readers
from consumer.read.cache import CRMCache
from consumer.read.connection import AsyncReadCommands, ReadCommands
from consumer.read.view import TenantView
from crmcache import credits_low
from crmcache.errors import StoreUnavailable
from crmcache.holds import Hold
from crmcache.keyspace import TenantKeys
from crmcache.lead_store import LeadStore
from crmcache.redis_client import make_redis
from crmcache.store import Store
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
        self.cache = CRMCache(settings)
        """The read client of every tenant the keys name (one pool, one notification
        connection, one thread, one Wrapper session)."""
        self.redis = make_redis(settings.cache_url, socket_timeout=settings.redis_socket_timeout)
        """Writes (deductions) get the longer CRM_REDIS_SOCKET_TIMEOUT of their own pool."""
        self.store = Store(self.redis)
        self.commands = ReadCommands(self.redis)
        self.readers = Readers(settings, reader_factory or self._view)
        self.settlement = SettlementQueue(settings)
        self.lead_store = LeadStore(settings.database_url.get_secret_value())
        self.metrics = ApiMetrics(self.readers)
        self.async_reads: AsyncReadCommands | None = None
        """For the event loop's own reads; made in the app's lifespan (bound to its loop)."""

    async def start(self) -> None:
        self.async_reads = AsyncReadCommands(self.settings)

    async def stop(self) -> None:
        if self.async_reads is not None:
            await self.async_reads.close()
            self.async_reads = None

    async def cached_balance(
        self, tenant: str, user_id: str
    ) -> tuple[bytes, int, bytes | None] | None:
        """(balance text, meta version, meta epoch), read atomically without blocking the loop;
        None when not cached, or when Redis fails (the caller then asks the reader, which
        knows the degraded rules)."""
        if self.async_reads is None:
            return None
        keys = TenantKeys.of(tenant)
        try:
            raw, version, epoch = await self.async_reads.script(
                "balance_peek", [keys.balance(user_id), keys.meta]
            )
        except StoreUnavailable:
            return None
        if raw is None:
            return None
        return raw, int(version), epoch

    def _view(self, tenant: str, settings: Settings) -> TenantView:
        return self.cache.tenant(tenant)

    @property
    def wrapper(self) -> WrapperClient:
        return self.cache.wrapper()

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self.keys.tenants()))

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """(Redis answers, each served tenant's ready flag): one round trip for every tenant."""
        tenants = self.tenants
        try:
            flags = self.commands.ready_flags([TenantKeys.of(t).meta for t in tenants])
        except StoreUnavailable:
            return False, dict.fromkeys(tenants, False)
        return True, dict(zip(tenants, flags, strict=True))

    def settle_soon(self, tenant: str) -> None:
        if self.settlement.enqueue(tenant):
            return
        # Let the next deduction try again instead of waiting for the flag to expire.
        try:
            self.commands.delete(TenantKeys.of(tenant).settle_scheduled)
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

    def close(self) -> None:
        self.readers.close()
        self.settlement.close()
        self.cache.close()
        self.lead_store.close()
        self.redis.close()
