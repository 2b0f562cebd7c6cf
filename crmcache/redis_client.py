"""Building Redis clients: one per process and URL, never one per call (design §9)."""

from __future__ import annotations

import threading

import redis

from config.settings import Settings

_clients: dict[tuple[str, float], redis.Redis] = {}
_lock = threading.Lock()


def make_redis(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A new client with timeouts on every call, keepalive and health checks."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        socket_keepalive=True,
        health_check_interval=15,
        retry_on_timeout=False,
        decode_responses=False,
    )


def shared_redis(settings: Settings) -> redis.Redis:
    """The process-wide client for the cache. Its pool resets itself after fork()."""
    key = (settings.cache_url, settings.redis_socket_timeout)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = make_redis(key[0], socket_timeout=key[1])
                _clients[key] = client
    return client
