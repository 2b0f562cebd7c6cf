"""The subscriber: Redis pub/sub messages in, Celery apply_events tasks out.

Thin by design: it validates, stamps and batches; the workers do the writing. Only one
subscriber is active at a time (a Redis lease); others wait as standbys and take over within
the lease time. Every (re)subscribe enqueues a resync, because pub/sub loses whatever was
published while nobody listened. Listed tenants are read over several pub/sub connections in
turn, so that one tenant's flood cannot hold back another's events
(consumer/ingest/pubsub_shards.py).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from types import FrameType
from typing import Any, Protocol

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import Settings
from consumer.ingest.batcher import Batcher
from consumer.ingest.fast_path import FastPath
from consumer.ingest.inflight import InFlight
from consumer.ingest.lanes import BULK, INTERACTIVE, URGENT, LaneRouter, lane_batches
from consumer.ingest.pubsub_shards import ConnectionLost, PubSubShards, channel_groups, shard_of
from crmcache import keyspace
from crmcache.errors import InvalidEvent, StoreUnavailable
from crmcache.event_validation import EventLimits
from crmcache.events import Event, parse_message, unexpected
from crmcache.log_once import ReasonLog
from crmcache.redis_client import make_redis, pubsub_client
from crmcache.store import Store

logger = logging.getLogger(__name__)

GAP_RESYNC_INTERVAL = 5.0
RECENT_IDS = 100_000
_RECONNECT_ON = (
    ConnectionLost,
    StoreUnavailable,
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
)
_CONNECTION_ERRORS = (*_RECONNECT_ON, KombuOperationalError)


class Enqueuer(Protocol):
    def apply_events(
        self, tenant: str, events: list[dict[str, Any]], bulk: bool = False, urgent: bool = False
    ) -> None: ...

    def preload(self, tenant: str | None, reason: str) -> None: ...


class Subscriber:
    """Listens to every tenant's input channels (or those in CRM_TENANTS) while it leads."""

    def __init__(self, settings: Settings, enqueuer: Enqueuer, store: Store | None = None) -> None:
        self.settings = settings
        self.enqueuer = enqueuer
        self.store = store or Store(
            make_redis(settings.cache_url, socket_timeout=settings.redis_socket_timeout)
        )
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats: Counter[str] = Counter()
        self.is_leader = False
        self.batcher = Batcher(
            settings.batch_size,
            settings.flush_interval_ms / 1000,
            bulk_batch_size=settings.bulk_batch_size,
            bulk_flush_interval=settings.bulk_flush_interval_ms / 1000,
            revoke_at_once=settings.urgent_lane,
        )
        self.lanes = LaneRouter(settings.bulk_threshold) if settings.event_lanes else None
        fast = settings.revoke_fast_path
        self.fast_path = FastPath(self.store, settings.dedupe_window, self.stats) if fast else None
        self._stop = threading.Event()
        self._last_seq: dict[tuple[str, str], int] = {}
        self._last_gap_resync: dict[str, float] = {}
        self._recent_ids: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lease_ms = int(settings.leader_lease * 1000)
        self._last_renewal = 0.0
        self._tenants_on: dict[int, set[str]] = {}
        for tenant, index in shard_of(settings.tenants, settings.subscriber_shards).items():
            self._tenants_on.setdefault(index, set()).add(tenant)
        self._shards: PubSubShards | None = None
        self.on_beat: Callable[[str], None] = lambda role: None
        """Called as the loop goes round with "active", "standby" or "reconnecting": this
        process's own health, for its container healthcheck (consumer/ingest/liveness.py)."""
        self.inflight = InFlight(
            self.store,
            enqueuer,
            self.stats,
            settings.inflight_timeout,
            settings.inflight_max_resends,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: flushing and stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Serve until stopped; returns the process exit code (0 after a clean stop)."""
        logger.info("subscriber %s starting", self.token)
        failures = 0
        while not self.stopping:
            try:
                if not self._lead():
                    self.on_beat("standby")
                    self._stop.wait(self.settings.leader_lease / 4)
                    continue
                self._serve()
                failures = 0
            except _RECONNECT_ON as exc:
                failures += 1
                self.stats["reconnects"] += 1
                self.on_beat("reconnecting")
                delay = min(self.settings.reconnect_max_delay, 0.1 * 2 ** min(failures, 10))
                delay *= random.uniform(0.5, 1.0)
                logger.warning("subscriber connection lost (%s); retrying in %.2fs", exc, delay)
                self._stop.wait(delay)
        self._flush(raise_errors=False)
        self._step_down()
        logger.info("subscriber %s stopped: %s", self.token, dict(self.stats))
        return 0

    # --- leadership -----------------------------------------------------------------------------

    def _lead(self) -> bool:
        """Hold (or take) the leader lease; False while another subscriber holds it."""
        if self.is_leader and self.store.renew_lease(keyspace.LEADER, self.token, self._lease_ms):
            self._last_renewal = time.monotonic()
            return True
        self.is_leader = self.store.acquire_lease(keyspace.LEADER, self.token, self._lease_ms)
        if self.is_leader:
            self._last_renewal = time.monotonic()
            self.stats["leaderships"] += 1
            logger.info("subscriber %s is now the active subscriber", self.token)
        return self.is_leader

    def _keep_lease(self, now: float) -> bool:
        if now - self._last_renewal < self.settings.leader_lease / 3:
            return True
        if self.store.renew_lease(keyspace.LEADER, self.token, self._lease_ms):
            self._last_renewal = now
            return True
        logger.warning("subscriber %s lost the leader lease; standing by", self.token)
        self.is_leader = False
        return False

    def _step_down(self) -> None:
        if self.is_leader:
            try:
                self.store.release_lease(keyspace.LEADER, self.token)
            except StoreUnavailable:
                pass  # it expires by itself
            self.is_leader = False

    # --- serving --------------------------------------------------------------------------------

    def _connect(self) -> PubSubShards:
        # No silent retries: redis-py would reconnect and resubscribe behind our back, and we
        # would never know to resync what was lost meanwhile.
        client = pubsub_client(
            self.settings.cache_url,
            socket_timeout=self.settings.redis_socket_timeout,
            socket_connect_timeout=self.settings.redis_socket_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        # Listed tenants get exact channels: Redis matches every PUBLISH against every pattern
        # of every client, and 5,000 patterns (1,000 tenants) cost ~140 us per PUBLISH. They
        # are spread over several connections, so that one tenant's flood cannot queue in
        # front of another tenant's messages (consumer/ingest/pubsub_shards.py).
        groups = channel_groups(self.settings.tenants, self.settings.subscriber_shards)
        shards = PubSubShards(
            client, groups, "subscribe" if self.settings.tenants else "psubscribe"
        )
        try:
            shards.subscribe(self.settings.redis_socket_timeout)
        except BaseException:
            shards.close()
            raise
        return shards

    def _serve(self) -> None:
        shards = self._shards = self._connect()
        self.stats["subscribes"] += 1
        # Anything published while we were not listening is lost: heal it with a resync that
        # starts only now that every subscription is confirmed.
        self.enqueuer.preload(None, "resubscribe")
        self.stats["resyncs"] += 1
        self.inflight.clear()  # the resync supersedes whatever was in flight
        interval = self.settings.health_check_interval
        try:
            while not self.stopping:
                now = time.monotonic()
                if not self._keep_lease(now):
                    return
                shards.check(now, interval)
                self.on_beat("active")
                wait = self.batcher.wait_time(now, min(interval, 0.5))
                # At most one batch's worth per connection per turn: a flooded connection gets
                # a turn, not the whole loop, and the turn bounds how long a flush waits.
                idle = shards.read(self._receive, self.settings.batch_size, wait)
                if self.batcher.due(time.monotonic(), idle):
                    self._flush(everything=idle)
                self.inflight.check(time.monotonic())
        finally:
            self._flush(raise_errors=False)
            self._shards = None
            shards.close()

    @cached_property
    def _limits(self) -> EventLimits:
        return EventLimits.of(self.settings)

    @cached_property
    def _logged(self) -> ReasonLog:
        return ReasonLog()

    def _receive(self, message: dict[str, Any]) -> None:
        """Validate one message and batch it. Whatever goes wrong with one message (bad input,
        a limit of Python's, a bug of ours) dead-letters that message, and the loop goes on."""
        if message["type"] not in ("pmessage", "message"):
            return
        channel = message["channel"]
        channel = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        payload = message["data"]
        self.stats["received"] += 1
        try:
            event = self._check_gap(parse_message(channel, payload, self._limits))
            self.batcher.add(event, time.monotonic())
        except InvalidEvent as exc:
            self._dead_letter(exc.reason, channel, payload, exc.tenant, exc.__cause__)
        except _CONNECTION_ERRORS:
            raise  # the connection's failure, not the message's: run() reconnects
        except Exception as exc:
            self._dead_letter(unexpected("handling a message", exc), channel, payload, None, exc)

    def _dead_letter(
        self,
        reason: str,
        channel: str,
        payload: bytes,
        tenant: str | None,
        cause: BaseException | None,
    ) -> None:
        """Keep the message with its reason; log each reason once (with the traceback of an
        unexpected exception), not once per message: a flood must not become a log flood."""
        self.stats["dead_lettered"] += 1
        if cause is not None:
            self.stats["unexpected_errors"] += 1
        if self._logged.first(reason):
            logger.log(
                logging.WARNING if cause is None else logging.ERROR,
                "dead-lettering message on %r: %s (logged once per reason)",
                channel[:120],
                reason,
                exc_info=cause,
            )
        try:
            self.store.dead_letter(
                reason,
                payload,
                channel=channel,
                tenant=tenant,
                maxlen=self.settings.dead_letter_maxlen,
            )
        except StoreUnavailable:
            logger.error("could not dead-letter message on %r: Redis unavailable", channel[:120])

    def _check_gap(self, event: Event) -> Event:
        """A jump in the Wrapper's own `seq` means messages were lost: resync that tenant.
        Returns the event with the seq seen before it on its stream (``upstream_prev``)."""
        useq = event.upstream_seq
        if useq is None:
            return event
        key = (event.tenant, event.stream)
        last = self._last_seq.get(key)
        if last is None or useq > last:
            self._last_seq[key] = useq
        if last is not None and useq > last:
            event = replace(event, upstream_prev=last)
        if last is not None and useq > last + 1:
            self.stats["gaps"] += 1
            now = time.monotonic()
            if now - self._last_gap_resync.get(event.tenant, -1e9) >= GAP_RESYNC_INTERVAL:
                self._last_gap_resync[event.tenant] = now
                logger.warning(
                    "tenant=%s gap in %s seq (%d after %d): resyncing",
                    event.tenant,
                    event.stream,
                    useq,
                    last,
                )
                self.enqueuer.preload(event.tenant, "gap")
                self.stats["resyncs"] += 1
        return event

    def _stamp(self, event: Event, fresh: int) -> Event:
        """Stamp an event; a re-published eventId keeps its first copy's stamp, so that the
        copy cannot overtake an event received between the two (the Lua dedupes the id)."""
        if event.event_id is None:
            return replace(event, seq=fresh)
        key = (event.tenant, event.event_id)
        seq = self._recent_ids.get(key)
        if seq is None:
            seq = self._recent_ids[key] = fresh
            if len(self._recent_ids) > RECENT_IDS:
                self._recent_ids.popitem(last=False)
        return replace(event, seq=seq)

    def _pace_bulk(self) -> None:
        """Read the connections of bulk tenants at most CRM_BULK_MAX_RATE events a second, so
        that a flood cannot take the CPU and the workers from every other tenant (its backlog
        waits in Redis). Only a connection on which every tenant is bulk: another tenant on it
        would wait behind the paced backlog (and with one connection, everybody would)."""
        shards = self._shards
        if shards is None or len(shards) < 2 or self.settings.bulk_max_rate <= 0:
            return
        bulk = self.batcher.bulk
        paced = {i for i, tenants in self._tenants_on.items() if tenants <= bulk}
        if paced != shards.paced:
            logger.info("pacing %d pub/sub connection(s) of bulk tenants", len(paced))
            shards.pace(paced, self.settings.bulk_max_rate, self.settings.batch_size)

    def _flush(self, raise_errors: bool = True, everything: bool = True) -> None:
        """Stamp pending events (one INCRBY per tenant, pipelined) and enqueue batches; unless
        `everything`, a bulk tenant's young partial batch waits to grow
        (consumer/ingest/batcher.py).

        If Redis or the broker fails, the pending events are dropped and the connection is
        treated as lost: the resync that follows the reconnect restores what they carried.
        """
        if not len(self.batcher):
            return
        now = time.monotonic()
        pending = self.batcher.drain(now, everything)
        if self.lanes is not None:
            self.lanes.observe(((t, len(evs)) for t, evs in pending.items()), now)
            self.batcher.bulk = self.lanes.bulk
            self._pace_bulk()
        if not pending:
            return
        try:
            firsts = self.store.reserve_stamps({t: len(evs) for t, evs in pending.items()})
            for tenant, events in pending.items():
                stamped = [self._stamp(e, firsts[tenant] + i) for i, e in enumerate(events)]
                if self.fast_path is not None:
                    self.fast_path.apply(tenant, stamped)
                bodies = [e.to_task() for e in stamped]
                flooding = self.lanes is not None and self.lanes.is_bulk(tenant)
                sizes = (self.settings.batch_size, self.settings.bulk_batch_size)
                urgent = self.settings.urgent_lane
                for lane, chunk in lane_batches(events, bodies, flooding, *sizes, urgent):
                    bulk = lane == BULK
                    self.enqueuer.apply_events(tenant, chunk, bulk=bulk, urgent=lane == URGENT)
                    self.inflight.sent(tenant, chunk, bulk, now)
                    self.stats["batches" if lane == INTERACTIVE else f"{lane}_batches"] += 1
                self.stats["published"] += len(bodies)
        except (StoreUnavailable, KombuOperationalError, OSError) as exc:
            dropped = sum(len(evs) for evs in pending.values())
            self.stats["dropped"] += dropped
            logger.error(
                "could not enqueue %d events (%s); a resync will restore them", dropped, exc
            )
            if raise_errors:
                raise ConnectionLost(f"enqueue failed: {exc}") from None
