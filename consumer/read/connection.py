"""A reader's Redis connection and its health: the seam where degraded mode starts.

One client per reader (never one per call), with a short socket timeout so that a hung Redis
costs one read at most ``CRM_READER_TIMEOUT_MS``. After a failure the connection is *down*: reads
stop touching Redis at all (they answer from the last-known-good copy at dict speed) until the
background thread's probe finds Redis answering again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from config.settings import Settings
from crmcache import keyspace
from crmcache.errors import StoreUnavailable
from crmcache.redis_client import make_redis
from crmcache.store import translate_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_PROBE_DELAY = 0.05


def reader_client(settings: Settings, *, retries: int = 1) -> redis.Redis:
    """A client whose calls fail fast: redis-py's default retries (up to 10, with backoff) would
    hold a read for seconds when Redis is down. One immediate retry on a connection error lets a
    pooled connection that a Redis restart broke reconnect transparently; timeouts are not
    retried."""
    client = make_redis(settings.cache_url, socket_timeout=settings.reader_timeout_ms / 1000)
    client.set_retry(Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)))
    return client


class ReaderConnection:
    """The reader's client, its registered Lua scripts, and whether Redis is reachable."""

    def __init__(self, settings: Settings) -> None:
        self.client = reader_client(settings)
        self._scripts: dict[str, Script] = {}
        self._max_delay = settings.reconnect_max_delay
        self._lock = threading.Lock()
        self.down_since: float | None = None
        """Monotonic time of the failure that made Redis unreachable; None while it answers."""
        self.failures = 0
        self._probe_delay = FIRST_PROBE_DELAY
        self._next_probe = 0.0

    def script(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            script = self.client.register_script(keyspace.lua_source(name))
            self._scripts[name] = script
        return script

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def run(self, call: Callable[[], T]) -> T:
        """Run one Redis call; StoreUnavailable (at once, without I/O) while Redis is down."""
        if self.down_since is not None:
            raise StoreUnavailable("Redis unreachable: the reader is in degraded mode")
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # translate_errors() inlined: this is every Redis read's path.
            self.mark_down()
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None

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
            with translate_errors():
                self.client.ping()
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

    def close(self) -> None:
        self.client.close()
