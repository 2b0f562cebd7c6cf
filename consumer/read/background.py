"""One background thread per process and Redis URL, shared by every reader of that process.

It listens to the tenants' ``crm:<t>:changes`` channels (the workers' coherence signal),
and every few milliseconds lets each reader do its periodic work (``Ticking.tick``): a version
check when half the staleness bound has passed, a reconnect probe while Redis is down, a
metrics flush. A lost pub/sub connection distrusts every reader's near-cache until it has
confirmed its version again (notifications may have been missed).

Fork-safe: a forked child starts with no thread and no pub/sub connection (the parent's
socket is never used by the child); the next reader call starts a new thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from typing import Protocol

import redis
from redis.client import PubSub

from config.settings import Settings
from consumer.read.connection import reader_client

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05
PUBSUB_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class Ticking(Protocol):
    """What a reader offers the background thread."""

    @property
    def changes_channel(self) -> str: ...

    def on_change(self, version: int, written: int | None, received: float) -> None: ...

    def on_disconnect(self) -> None: ...

    def on_subscribed(self) -> None: ...

    def tick(self, now: float) -> None: ...


class Background:
    """The shared thread. Use ``Background.for_settings(settings)``; readers ``add`` themselves
    and ``discard`` themselves on shutdown; the thread stops when the last one leaves."""

    _instances: dict[str, Background] = {}
    _instances_lock = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._readers: weakref.WeakSet[Ticking] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()

    @classmethod
    def for_settings(cls, settings: Settings) -> Background:
        with cls._instances_lock:
            background = cls._instances.get(settings.cache_url)
            if background is None:
                background = cls(settings)
                cls._instances[settings.cache_url] = background
            return background

    def add(self, reader: Ticking) -> None:
        with self._lock:
            self._readers.add(reader)
        self.ensure_running()

    def discard(self, reader: Ticking) -> None:
        with self._lock:
            self._readers.discard(reader)
            last = not self._readers
            thread = self._thread
            if last:
                self._stop.set()
                self._thread = None
        if last and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def ensure_running(self) -> None:
        """Start the thread if this process has none (first reader, or after a fork)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._after_fork()
            if self._thread is None or not self._thread.is_alive():
                if not self._readers:
                    return
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="crmcache-reader", daemon=True
                )
                self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: no thread runs here, and a lock the parent's thread held at the
        fork would never be released."""
        self._pid = os.getpid()
        self._thread = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _readers_now(self) -> list[Ticking]:
        with self._lock:
            return list(self._readers)

    # --- the thread ----------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        # No retries: a lost connection must surface here (redis-py would otherwise reconnect
        # and resubscribe silently, hiding the notifications missed meanwhile).
        client = reader_client(self.settings, retries=0)
        pubsub: PubSub | None = None
        subscribed: set[str] = set()
        delay = POLL_SECONDS
        try:
            while not stop.is_set():
                readers = self._readers_now()
                try:
                    if pubsub is None:
                        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                        subscribed = set()
                    self._listen(pubsub, subscribed, readers)
                    delay = POLL_SECONDS
                except PUBSUB_ERRORS as exc:
                    logger.info("change notifications lost (%s); revalidating", exc)
                    _close(pubsub)
                    pubsub = None
                    for reader in readers:
                        reader.on_disconnect()
                    stop.wait(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
                now = time.monotonic()
                for reader in readers:
                    try:
                        reader.tick(now)
                    except Exception:  # a boundary: one reader's bug must not stop the others
                        logger.exception("reader background work failed")
        finally:
            _close(pubsub)
            client.close()

    def _listen(self, pubsub: PubSub, subscribed: set[str], readers: list[Ticking]) -> None:
        by_channel: dict[str, list[Ticking]] = {}
        for reader in readers:
            by_channel.setdefault(reader.changes_channel, []).append(reader)
        wanted = set(by_channel)
        if wanted - subscribed:
            pubsub.subscribe(*(wanted - subscribed))
            subscribed |= wanted
        if subscribed - wanted:
            pubsub.unsubscribe(*(subscribed - wanted))  # type: ignore[no-untyped-call]
            subscribed &= wanted
        if not subscribed:
            time.sleep(POLL_SECONDS)
            return
        message = pubsub.get_message(timeout=POLL_SECONDS)
        while message is not None:
            received = time.monotonic()
            channel = message["channel"].decode()
            if message["type"] == "subscribe":
                # Confirmed only now: a version confirmed before this instant may have changed
                # unannounced, so every reader of the channel revalidates once.
                for reader in by_channel.get(channel, ()):
                    reader.on_subscribed()
            elif message["type"] == "message":
                version, written = _version_of(message["data"])
                if version is not None:
                    for reader in by_channel.get(channel, ()):
                        reader.on_change(version, written, received)
            message = pubsub.get_message(timeout=0)


def _version_of(data: object) -> tuple[int | None, int | None]:
    """(version, critical fields written) of a ``{"version": n, "written": w}`` notification;
    ``written`` is None when absent (mark_ready publishes only the version)."""
    try:
        body = json.loads(data)  # type: ignore[arg-type]
        version, written = body["version"], body.get("written")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, None
    if not _is_int(version):
        return None, None
    return version, written if _is_int(written) else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _close(pubsub: PubSub | None) -> None:
    if pubsub is None:
        return
    try:
        pubsub.close()
    except PUBSUB_ERRORS:
        pass


def _reset_after_fork() -> None:
    Background._instances_lock = threading.Lock()
    for background in Background._instances.values():
        background._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
