"""Stamp changes with the full event envelope (README.md, "The event contract") and PUBLISH them
on ``crm:{tenant}:{stream}``."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis

from sandbox.state import Change


def channel(tenant: str, stream: str) -> str:
    return f"crm:{tenant}:{stream}"


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as most upstream services write it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventPublisher:
    """Keeps the per-entity ``version`` and per-tenant-and-stream ``seq`` counters.

    Without a Redis URL events are still stamped (and returned) but published nowhere.
    """

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._versions: Counter[tuple[str, str, str]] = Counter()
        self._seqs: Counter[tuple[str, str]] = Counter()

    def stamp(self, change: Change) -> dict[str, Any]:
        with self._lock:
            self._versions[change.tenant, change.stream, change.entity] += 1
            self._seqs[change.tenant, change.stream] += 1
            version = self._versions[change.tenant, change.stream, change.entity]
            seq = self._seqs[change.tenant, change.stream]
        return {
            "eventId": uuid.uuid4().hex,
            "eventType": change.event_type,
            "tenantId": change.tenant,
            "version": version,
            "seq": seq,
            "occurredAt": utc_now_iso(),
            "data": change.data,
        }

    def publish(self, channel_name: str, payload: str | bytes) -> int:
        """PUBLISH and return the number of receivers; 0 when no Redis URL was given."""
        client = self._redis()
        if client is None:
            return 0
        return int(client.publish(channel_name, payload))

    def publish_event(self, tenant: str, stream: str, event: dict[str, Any]) -> int:
        payload = json.dumps(event, separators=(",", ":"))
        return self.publish(channel(tenant, stream), payload)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _redis(self) -> redis.Redis | None:
        if self.redis_url is None:
            return None
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.redis_url, socket_timeout=5, socket_connect_timeout=5
                )
            return self._client
