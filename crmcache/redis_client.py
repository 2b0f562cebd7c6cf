"""Building Redis clients: one per process and URL, never one per call (README.md, "Scaling out").

The URL says which Redis (config/redis_urls.py): one server, a Redis Cluster
(``redis+cluster://``: a ``redis.cluster.RedisCluster``, every tenant's keys in one slot thanks
to the ``{tenant}`` hash tag) or the master that Sentinels name (``redis+sentinel://``: a client
that asks the Sentinels again after a failover). Every component builds its clients here, so
each of them works against all three.
"""

from __future__ import annotations

import random
import threading
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

from config.redis_urls import RedisTarget, parse_redis_url
from config.settings import Settings

_clients: dict[tuple[str, float], redis.Redis] = {}
_lock = threading.Lock()


def _options(socket_timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry_on_timeout": False,
        "decode_responses": False,
    }


def _sentinel(target: RedisTarget, options: dict[str, Any]) -> Sentinel:
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    return Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=sentinel_options, **options
    )


def _master_options(target: RedisTarget) -> dict[str, Any]:
    options: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }
    if target.tls:
        options["connection_class"] = SentinelManagedSSLConnection
    return options


def _master(sentinel: Sentinel, target: RedisTarget) -> redis.Redis:
    assert target.service is not None
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service, **_master_options(target)
    )
    return cast(redis.Redis, client)


def make_redis(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A new client with timeouts on every call, keepalive and health checks.

    For a Cluster the client is a ``RedisCluster``: it is typed as ``redis.Redis`` because
    crmcache sends it the same commands (each multi-key command and script within one tenant's
    slot, pipelines per slot).
    """
    target = parse_redis_url(url)
    options = _options(socket_timeout)
    if target.kind == "cluster":
        # RedisCluster has its own retries and deprecates retry_on_timeout.
        options.pop("retry_on_timeout")
        cluster = RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in target.nodes
            ],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            **options,
        )
        return cast(redis.Redis, cluster)
    if target.kind == "sentinel":
        return _master(_sentinel(target, options), target)
    return redis.Redis.from_url(url, **options)


def pubsub_client(url: str, **options: Any) -> redis.Redis:
    """A plain client for a pub/sub connection (the subscriber's): one server; for a Cluster a
    node picked among the current primaries (Cluster pub/sub reaches every node); for
    Sentinels the current master, found again at every reconnect."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        probe = make_redis(url, socket_timeout=float(options.get("socket_timeout") or 5.0))
        try:
            primaries = cast(RedisCluster, probe).get_primaries()  # type: ignore[no-untyped-call]
            node = random.choice(primaries)
        finally:
            probe.close()
        return redis.Redis.from_url(target.node_url(node.host, node.port), **options)
    if target.kind == "sentinel":
        assert target.service is not None
        return _master(_sentinel(target, options), target)
    return redis.Redis.from_url(url, **options)


def make_async_redis(url: str, *, socket_timeout: float = 5.0) -> redis.asyncio.Redis:
    """The asyncio counterpart of make_redis (the HTTP API's fast paths)."""
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "decode_responses": False,
    }
    if target.kind == "cluster":
        cluster = redis.asyncio.cluster.RedisCluster(
            startup_nodes=[
                redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes
            ],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            **options,
        )
        return cast(redis.asyncio.Redis, cluster)
    if target.kind == "sentinel":
        assert target.service is not None
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs={k: v for k, v in options.items() if k.startswith("socket_")},
            **options,
        )
        master_options = _master_options(target)
        if target.tls:
            master_options["connection_class"] = redis.asyncio.sentinel.SentinelManagedSSLConnection
        client = sentinel.master_for(target.service, **master_options)
        return cast(redis.asyncio.Redis, client)
    return redis.asyncio.Redis.from_url(url, **options)


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
