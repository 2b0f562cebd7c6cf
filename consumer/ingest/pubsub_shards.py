"""The subscriber's pub/sub connections: tenants spread over several, read in turn.

Redis delivers one connection's messages as one ordered stream: on a single connection a quiet
tenant's event waits behind every message of a flood published before it, however the
subscriber batches afterwards (a 50,000-event import published at ~90,000/s, read at
~25,000/s, held it back 1.3-2.1 s at p99; sharded, 95-181 ms: benchmarks/fairness_bench.py).
So listed tenants (CRM_TENANTS) are spread over up to
``CRM_SUBSCRIBER_SHARDS`` connections, and each turn reads at most ``quota`` messages from each
connection that has some: a flooded connection's backlog stays in its own socket (and in
Redis's output buffer for that client), and every other connection gets its turn within one
quota's worth of the flood.

The guarantee: the i-th listed tenant listens on connection ``i mod shards``, so with shards >=
tenants every tenant has a connection of its own and no flood delays another tenant's reads by
more than one turn. Tenants that share a connection with a flooding tenant wait behind its
backlog as before (1/shards of them). Every channel of one tenant is on the same connection,
so the tenant's events are still received, and stamped, in publish order. Pattern
subscriptions (no CRM_TENANTS) stay on one connection: a pattern cannot leave a tenant out.

Connections carrying only bulk tenants (consumer/ingest/lanes.py) can be *paced* (``pace``, the
subscriber's CRM_BULK_MAX_RATE): read at most that many messages a second, in chunks, while the
rest of the flood waits in Redis. Reading a flood as fast as possible takes the CPU and the
workers from everyone else; paced, the other tenants keep their idle latency (measured with
benchmarks/fairness_bench.py, see the README). The backlog lives in Redis's output buffer for
that connection: past `client-output-buffer-limit pubsub` Redis closes it, which is handled
like any lost connection (resubscribe, resync), so nothing is lost, but a resync costs more
than reading.

Each connection keeps the single connection's guarantees: a reconnect that redis-py performed
by itself, a connection silent for three liveness intervals, or a closed socket raises
`ConnectionLost`; the subscriber then drops every connection, subscribes again and resyncs.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import redis

from crmcache import keyspace

LIVENESS_PING = "crmcache-liveness"


class ConnectionLost(Exception):
    """A pub/sub connection is dead or silent (half-open TCP): reconnect."""


PACE_STEP = 0.02
"""Seconds of a paced connection's rate read at once: reads come in chunks, not one message per
wakeup (every wakeup that finds the subscriber idle flushes, and tiny batches cost the workers)."""


class Pace:
    """A token bucket for one connection: at most ``rate`` messages a second, read in chunks of
    up to ``chunk`` (pure logic, no I/O)."""

    def __init__(self, rate: float, quota: int, now: float) -> None:
        self.rate = rate
        self.chunk = max(1, min(quota, int(rate * PACE_STEP)))
        self.tokens = float(self.chunk)
        self.at = now

    def allowance(self, now: float) -> int:
        """Messages that may be read now: a whole chunk, or 0 (wait for ``wait_time``)."""
        self.tokens = min(float(self.chunk), self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.chunk if self.tokens >= self.chunk else 0

    def spend(self, count: int) -> None:
        self.tokens -= count

    def wait_time(self) -> float:
        return max(0.0, (self.chunk - self.tokens) / self.rate)


class _CountingPubSub(redis.client.PubSub):
    """Counts connects: redis-py reconnects and resubscribes by itself in some paths (its
    connect callback), and a silent reconnect must be treated as the lost connection it is."""

    connects = 0

    def on_connect(self, connection: Any) -> None:
        self.connects += 1
        super().on_connect(connection)


def channel_groups(tenants: tuple[str, ...], shards: int) -> list[list[str]]:
    """Exact channels per connection: tenant i's channels on connection i mod shards (no
    connection left empty); without tenants, the patterns of every tenant on one."""
    if not tenants:
        return [keyspace.input_patterns()]
    groups: list[list[str]] = [[] for _ in range(min(shards, len(tenants)))]
    for tenant, index in shard_of(tenants, shards).items():
        groups[index].extend(keyspace.input_patterns((tenant,)))
    return groups


def shard_of(tenants: tuple[str, ...], shards: int) -> dict[str, int]:
    """The connection each listed tenant listens on (``channel_groups``' order)."""
    count = max(1, min(shards, len(tenants)))
    return {tenant: i % count for i, tenant in enumerate(tenants)}


class _Shard:
    """One pub/sub connection and what the subscriber knows of it."""

    def __init__(self, client: redis.Redis, names: list[str], kind: str) -> None:
        self.pubsub = _CountingPubSub(client.connection_pool)
        self.names = names
        self.kind = kind
        self.subscribed_connects = 0
        self.last_data = time.monotonic()

    def subscribe(self) -> None:
        if self.kind == "subscribe":
            self.pubsub.subscribe(*self.names)
        else:
            self.pubsub.psubscribe(*self.names)

    def confirm(self, deadline: float) -> None:
        """Wait for every subscription's confirmation, on the connection that is current."""
        confirmed, connects = 0, self.pubsub.connects
        while confirmed < len(self.names) or connects != self.pubsub.connects:
            if time.monotonic() > deadline:
                raise ConnectionLost(f"{self.kind} was not confirmed in time")
            if connects != self.pubsub.connects:  # confirmations of an earlier connection
                confirmed, connects = 0, self.pubsub.connects
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["type"] == self.kind:
                confirmed += 1
        self.subscribed_connects = self.pubsub.connects
        self.last_data = time.monotonic()

    def fileno(self) -> int:
        connection = self.pubsub.connection
        sock = connection._sock if connection is not None else None
        if sock is None:
            raise ConnectionLost("the pub/sub connection is closed")
        return sock.fileno()

    def has_buffered(self) -> bool:
        """TLS may hold decrypted bytes above the socket, which polling the socket misses."""
        connection = self.pubsub.connection
        sock = connection._sock if connection is not None else None
        pending = getattr(sock, "pending", None)
        return bool(pending and pending())


class PubSubShards:
    """Every pub/sub connection of the active subscriber, read in turn."""

    def __init__(self, client: redis.Redis, groups: list[list[str]], kind: str) -> None:
        # Keep the client referenced for the life of the subscriptions: when it is garbage
        # collected it closes its pool, and with it the pub/sub connections.
        self.client = client
        self.shards = [_Shard(client, names, kind) for names in groups]
        self._unfinished: set[int] = set()
        self._paces: dict[int, Pace] = {}
        self._turn = 0
        self._last_ping = time.monotonic()

    def __len__(self) -> int:
        return len(self.shards)

    def subscribe(self, timeout: float) -> None:
        """Subscribe every connection and wait for every confirmation (at most `timeout`)."""
        for shard in self.shards:
            shard.subscribe()
        deadline = time.monotonic() + timeout
        for shard in self.shards:
            shard.confirm(deadline)
        # Messages may already sit in a parser's buffer, where polling the socket misses them.
        self._unfinished = set(range(len(self.shards)))
        self._last_ping = time.monotonic()

    def check(self, now: float, interval: float) -> None:
        """Ping every connection each `interval`; raise ConnectionLost for a connection that
        redis-py re-established behind our back or that stayed silent for 3 intervals."""
        if now - self._last_ping >= interval:
            for shard in self.shards:
                shard.pubsub.ping(LIVENESS_PING)
            self._last_ping = now
        for index, shard in enumerate(self.shards):
            if shard.pubsub.connects != shard.subscribed_connects:
                raise ConnectionLost(f"pub/sub connection {index} was re-established")
            if now - shard.last_data > 3 * interval:
                raise ConnectionLost(
                    f"no data from Redis on connection {index} for {now - shard.last_data:.1f}s"
                )

    def pace(self, indexes: set[int], rate: float, quota: int) -> None:
        """Read the connections in `indexes` at most `rate` messages a second (their backlog
        waits in Redis), every other connection freely; `rate` 0 paces none."""
        if rate <= 0:
            indexes = set()
        now = time.monotonic()
        self._paces = {
            i: self._paces.get(i) or Pace(rate, quota, now) for i in indexes if i < len(self.shards)
        }

    @property
    def paced(self) -> frozenset[int]:
        return frozenset(self._paces)

    def read(self, receive: Callable[[dict[str, Any]], None], quota: int, wait: float) -> bool:
        """One turn: up to `quota` messages from each connection that has any (a paced one: its
        allowance), starting one connection further each turn; blocks up to `wait` while none
        has any. Returns whether every connection was drained, but for paced connections'
        backlogs (the subscriber is idle: it may flush)."""
        held = self._held(time.monotonic())
        ready = self._ready(0.0 if self._unfinished - held else wait, held)
        if not ready:
            return not self._unfinished - held
        count = len(self.shards)
        start, self._turn = self._turn, (self._turn + 1) % count
        for index in sorted(ready, key=lambda i: (i - start) % count):
            shard = self.shards[index]
            pace = self._paces.get(index)
            limit = quota if pace is None else pace.allowance(time.monotonic())
            read = 0
            while read < limit:
                message = shard.pubsub.get_message(timeout=0)
                if message is None:
                    break
                receive(message)
                read += 1
            if read:
                shard.last_data = time.monotonic()
                if pace is not None:
                    pace.spend(read)
            if read >= limit:
                self._unfinished.add(index)
            else:
                self._unfinished.discard(index)
        return not self._unfinished - self._held(time.monotonic())

    def _held(self, now: float) -> set[int]:
        """Paced connections that used up their allowance for now."""
        return {i for i, pace in self._paces.items() if not pace.allowance(now)}

    def _ready(self, wait: float, held: set[int]) -> set[int]:
        """Connections that may have a message: those a quota cut short, and those whose socket
        is readable (waiting up to `wait` for one when there is nothing else); never a `held`
        one, but the wait ends when the first of those may read again."""
        ready = self._unfinished - held
        ready.update(
            i for i, shard in enumerate(self.shards) if i not in held and shard.has_buffered()
        )
        poller = select.poll()
        by_fd = {}
        for index, shard in enumerate(self.shards):
            if index in held:
                continue
            fd = shard.fileno()
            by_fd[fd] = index
            poller.register(fd, select.POLLIN)
        if held:
            wait = min(wait, min(self._paces[i].wait_time() for i in held))
        # poll() takes milliseconds; a closed socket reports POLLHUP/POLLERR: reading it then
        # raises redis.ConnectionError, which the subscriber handles as a lost connection.
        timeout_ms = 0 if ready else max(0.0, wait) * 1000
        ready.update(by_fd[fd] for fd, _ in poller.poll(timeout_ms))
        return ready

    def close(self) -> None:
        for shard in self.shards:
            try:
                shard.pubsub.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail any way
                pass
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
