"""The API's per-process resources: cache, Wrapper client, API keys, readers, Celery producer."""

from __future__ import annotations

import logging

from celery import Celery

from config.celery import CREDITS_QUEUE, celery_config
from config.settings import Settings
from consumer.http.metrics import ApiMetrics
from consumer.http.readers import ReaderFactory, Readers
from crmcache.apikeys import ApiKeyRing
from crmcache.errors import StoreUnavailable
from crmcache.keyspace import TenantKeys
from crmcache.redis_client import make_redis
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
        self.metrics = ApiMetrics(self.readers)

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
        self.redis.close()
