"""The read side's one seam to Redis: every command a reader or the HTTP API sends, and the
connection's health, where degraded mode starts.

``ReadCommands`` names each command the read side needs (a Lua script, the meta check, the
warm-up's pipelines, a guard, a counter flush ...) and translates redis-py's connection
errors into ``StoreUnavailable``, so nothing above imports redis-py. ``ReaderConnection`` adds
the health rule: after a failure Redis is *down* and every call fails at once, without I/O
(reads answer from their last-known-good copy at dict speed), until the background thread's
probe finds Redis answering again. One client per process and settings, never one per call,
with a short socket timeout so that a hung Redis costs one read at most
``CRM_READER_TIMEOUT_MS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import Settings
from crmcache.errors import StoreUnavailable
from crmcache.keyspace import (
    CHANGES_PATTERN,
    META_EPOCH,
    META_READY,
    META_VERSION,
    READY_FLAG,
    tenant_of_changes_channel,
)
from crmcache.redis_client import make_async_redis, make_redis, pubsub_client
from crmcache.store import async_lua_script, lua_script

logger = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_PROBE_DELAY = 0.05
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
PUBSUB_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class Meta:
    """A tenant's meta state as read at one instant: what the near-cache confirms against."""

    epoch: bytes | None
    version: int
    ready: bool

    @classmethod
    def of(cls, version: Any, ready: Any, epoch: Any) -> Meta:
        return cls(epoch, int(version or 0), ready == READY_FLAG)


def reader_client(settings: Settings, *, retries: int = 1) -> redis.Redis:
    """A client whose calls fail fast: redis-py's default retries (up to 10, with backoff) would
    hold a read for seconds when Redis is down. One immediate retry on a connection error lets a
    pooled connection that a Redis restart broke reconnect transparently; timeouts are not
    retried."""
    client = make_redis(settings.cache_url, socket_timeout=settings.reader_timeout_ms / 1000)
    client.set_retry(Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)))
    return client


class ReadCommands:
    """The read side's Redis commands on one client; StoreUnavailable when Redis fails."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except REDIS_ERRORS as exc:
            self._failed()
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None

    def _failed(self) -> None:
        """Hook: a call failed on the connection (ReaderConnection marks Redis down)."""

    def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``crmcache/lua/<name>.lua``."""
        script = lua_script(self.client, name)
        return self._call(lambda: script(keys=keys, args=args))

    def meta(self, meta_key: str, new_epoch: str) -> Meta:
        """The tenant's (epoch, version, ready), storing ``new_epoch`` when it has no epoch yet
        (the first reader of a tenant creates it, as read_cost.lua does)."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(meta_key, META_EPOCH, new_epoch)
            pipe.hmget(meta_key, META_VERSION, META_READY, META_EPOCH)
            return pipe.execute()

        _, (version, ready, epoch) = self._call(read)
        return Meta.of(version, ready, epoch)

    def metas(self, meta_keys: Sequence[str], new_epochs: Sequence[str]) -> list[Meta]:
        """``meta`` of many tenants in one pipelined round trip (one per node on a Cluster): one
        ``HMGET`` each, the background's version check. Only a tenant without an epoch (never
        loaded, or Redis lost its data) costs a second round trip, that creates it as ``meta``
        does; the check's cost is then one command per tenant, not two."""

        def read(keys: Sequence[str], epochs: Sequence[str] | None) -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for n, key in enumerate(keys):
                if epochs is not None:
                    pipe.hsetnx(key, META_EPOCH, epochs[n])
                pipe.hmget(key, META_VERSION, META_READY, META_EPOCH)
            return pipe.execute()

        if not meta_keys:
            return []
        metas = [Meta.of(*fields) for fields in self._call(lambda: read(meta_keys, None))]
        missing = [n for n, meta in enumerate(metas) if meta.epoch is None]
        if missing:
            keys, epochs = [meta_keys[n] for n in missing], [new_epochs[n] for n in missing]
            replies = self._call(lambda: read(keys, epochs))
            for n, fields in zip(missing, replies[1::2], strict=True):
                metas[n] = Meta.of(*fields)
        return metas

    def hash_sizes(self, keys: Sequence[str]) -> list[int]:
        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hlen(key)
            return pipe.execute()

        return [int(n) for n in self._call(read)]

    def load_hashes(
        self, meta_key: str, new_epoch: str, keys: Sequence[str]
    ) -> tuple[Meta, list[dict[bytes, bytes]]]:
        """Whole hashes read atomically with the tenant's meta state (``meta``)."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(meta_key, META_EPOCH, new_epoch)
            pipe.hmget(meta_key, META_VERSION, META_READY, META_EPOCH)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

        _, (version, ready, epoch), *tables = self._call(read)
        return Meta.of(version, ready, epoch), tables

    def claim(self, key: str, value: str | int, ttl_ms: int) -> bool:
        """SET NX PX: True for the first caller within ``ttl_ms`` (a guard)."""
        return bool(self._call(lambda: self.client.set(key, value, nx=True, px=ttl_ms)))

    def delete(self, key: str) -> None:
        self._call(lambda: self.client.delete(key))

    def hash_field(self, key: str, field: str) -> bytes | None:
        raw = self._call(lambda: self.client.hget(key, field))
        return raw if raw is None or isinstance(raw, bytes) else raw.encode()

    def add_counters(
        self, rows: Sequence[tuple[str, Mapping[str, int]]], set_key: str, members: Sequence[str]
    ) -> None:
        """HINCRBY each row's deltas into its hash, and add ``members`` to ``set_key``: one
        pipelined round trip for every tenant's counters."""

        def send() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, deltas in rows:
                for name, delta in deltas.items():
                    pipe.hincrby(key, name, delta)
            pipe.sadd(set_key, *members)
            pipe.execute()

        self._call(send)

    def ready_flags(self, meta_keys: Sequence[str]) -> list[bool]:
        """Whether each tenant is ready: one pipelined round trip for all of them."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in meta_keys:
                pipe.hget(key, META_READY)
            return pipe.execute()

        return [raw == READY_FLAG for raw in self._call(read)]

    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()


class ReaderConnection(ReadCommands):
    """The readers' client, and whether Redis is reachable (degraded mode)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(reader_client(settings))
        self._max_delay = settings.reconnect_max_delay
        self._lock = threading.Lock()
        self.down_since: float | None = None
        """Monotonic time of the failure that made Redis unreachable; None while it answers."""
        self.failures = 0
        self._probe_delay = FIRST_PROBE_DELAY
        self._next_probe = 0.0

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def _call(self, call: Callable[[], T]) -> T:
        """StoreUnavailable at once, without I/O, while Redis is down."""
        if self.down_since is not None:
            raise StoreUnavailable("Redis unreachable: the reader is in degraded mode")
        return super()._call(call)

    def _failed(self) -> None:
        self.mark_down()

    def mark_down(self) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.failures += 1
                self._probe_delay = FIRST_PROBE_DELAY
                self._next_probe = self.down_since + self._probe_delay
                logger.warning("Redis unreachable: reader answers from its last-known-good copy")

    def probe_due(self, now: float) -> bool:
        return self.down_since is not None and now >= self._next_probe

    def probe(self) -> bool:
        """PING Redis; True (and up again) when it answers. Backs off up to the reconnect delay."""
        try:
            ReadCommands._call(self, self.client.ping)  # past the down check: that is the probe
        except StoreUnavailable:
            with self._lock:
                self._probe_delay = min(self._probe_delay * 2, self._max_delay)
                self._next_probe = time.monotonic() + self._probe_delay
            return False
        with self._lock:
            was_down, self.down_since = self.down_since, None
        if was_down is not None:
            logger.warning("Redis reachable again after %.1f s", time.monotonic() - was_down)
        return True

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Notice:
    """What the change feed heard: its subscription confirmed (``tenant`` None), or a
    tenant's change notification (``data``: the workers' ``{"version": n, "written": w}``)."""

    tenant: str | None
    data: bytes | None = None


class ChangeFeed:
    """The one pub/sub connection of a process's readers: one pattern subscription hears every
    tenant's change notifications, however many tenants it serves (on a Cluster, any primary
    hears them all: the cluster bus carries every PUBLISH to every node). No retries: a lost
    connection must surface (redis-py would otherwise reconnect and resubscribe silently,
    hiding the notifications missed meanwhile); its errors become StoreUnavailable."""

    def __init__(self, settings: Settings) -> None:
        timeout = settings.reader_timeout_ms / 1000
        self._client = _call_pubsub(
            lambda: pubsub_client(
                settings.cache_url,
                socket_timeout=timeout,
                socket_connect_timeout=min(timeout, 5.0),
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
            )
        )
        self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        _call_pubsub(lambda: self._pubsub.psubscribe(CHANGES_PATTERN))

    def poll(self, timeout: float) -> list[Notice]:
        """What arrived within ``timeout`` (one wait at most), in the order it was sent."""
        heard: list[Notice] = []
        message = _call_pubsub(lambda: self._pubsub.get_message(timeout=timeout))
        while message is not None:
            if message["type"] == "psubscribe":
                heard.append(Notice(None))
            elif message["type"] == "pmessage":
                tenant = tenant_of_changes_channel(message["channel"].decode())
                if tenant is not None:
                    heard.append(Notice(tenant, message["data"]))
            message = _call_pubsub(lambda: self._pubsub.get_message(timeout=0))
        return heard

    def close(self) -> None:
        for close in (self._pubsub.close, self._client.close):
            try:
                close()
            except PUBSUB_ERRORS:
                pass


def _call_pubsub(call: Callable[[], T]) -> T:
    try:
        return call()
    except PUBSUB_ERRORS as exc:
        raise StoreUnavailable(f"change notifications lost: {exc}") from None


class AsyncReadCommands:
    """The read commands the HTTP API's event loop sends itself (without a thread hop)."""

    def __init__(self, settings: Settings) -> None:
        self.client = make_async_redis(
            settings.cache_url, socket_timeout=settings.reader_timeout_ms / 1000
        )

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        """Run ``crmcache/lua/<name>.lua``; StoreUnavailable when Redis fails."""
        script = async_lua_script(self.client, name)
        try:
            return await script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None

    async def close(self) -> None:
        await self.client.aclose()
