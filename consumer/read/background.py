"""The one background thread of a ``CRMCache``, whatever the number of tenants it serves.

It listens to the change feed (one pub/sub connection, one pattern subscription: the workers'
coherence signal for every tenant) and every ``POLL_SECONDS`` (a quarter of the staleness bound
when that is shorter, so that a version check, due half a bound after the last, lands before
the bound runs out) lets the client do its periodic work (``Listener.tick``: version checks,
the reconnect probe while Redis is down, the metrics flush, dropping idle tenants). A lost
pub/sub connection distrusts every tenant's near-cache until it is confirmed again
(notifications may have been missed), and a confirmed (re)subscription confirms them all at
once.

Fork-safe: a forked child starts with no thread and no pub/sub connection (the parent's socket
is never used by the child); the client's next read starts a new thread. The thread holds its
client weakly and ends when the client is closed or collected.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Protocol

from config.settings import Settings
from consumer.read.connection import ChangeFeed, Notice
from crmcache.errors import StoreUnavailable

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05


class Listener(Protocol):
    """What the client offers its background thread."""

    def on_change(
        self, tenant: str, version: int, written: int | None, access: int | None = None
    ) -> None: ...

    def on_disconnect(self) -> None: ...

    def on_subscribed(self) -> None: ...

    def tick(self, now: float) -> None: ...


class Background:
    """The thread. ``ensure_running`` starts it (again after a fork), ``stop`` ends it."""

    def __init__(self, settings: Settings, listener: Listener) -> None:
        self.settings = settings
        self._listener = weakref.ref(listener)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._poll = min(POLL_SECONDS, settings.near_cache_staleness_ms / 4000)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def ensure_running(self) -> None:
        if self.running:
            return
        with self._lock:
            if self._pid != os.getpid():
                self.after_fork()
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="crmcache-reader", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def after_fork(self) -> None:
        """In a forked child: no thread runs here, and a lock the parent's thread held at the
        fork would never be released."""
        self._pid = os.getpid()
        self._thread = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # --- the thread ----------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        feed: ChangeFeed | None = None
        poll = self._poll
        delay, next_tick = POLL_SECONDS, 0.0
        try:
            while not stop.is_set():
                try:
                    if feed is None:
                        feed = ChangeFeed(self.settings)
                    heard = feed.poll(poll)
                    delay = POLL_SECONDS
                except StoreUnavailable as exc:
                    logger.info("%s; revalidating every tenant", exc)
                    _close(feed)
                    feed, heard = None, []
                    if not self._call(lambda listener: listener.on_disconnect()):
                        return
                    stop.wait(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
                if not self._call(partial(_deliver, heard=heard)):
                    return
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + poll
                    if not self._call(partial(_tick, now=now)):
                        return
        finally:
            _close(feed)

    def _call(self, work: Callable[[Listener], None]) -> bool:
        """Do ``work`` for the client; False when the client is gone (the thread then ends)."""
        listener = self._listener()
        if listener is None:
            return False
        try:
            work(listener)
        except Exception:  # a boundary: one failure must not end the thread
            logger.exception("reader background work failed")
        return True


def _tick(listener: Listener, now: float) -> None:
    listener.tick(now)


def _deliver(listener: Listener, heard: list[Notice]) -> None:
    """Hand what the feed heard to the client, in order."""
    for notice in heard:
        if notice.tenant is None:
            listener.on_subscribed()
            continue
        version, written, access = _version_of(notice.data)
        if version is not None:
            listener.on_change(notice.tenant, version, written, access)


def _version_of(data: object) -> tuple[int | None, int | None, int | None]:
    """(version, critical fields written, of which access fields) of a ``{"version": n,
    "written": w, "access": a}`` notification; ``written`` and ``access`` are None when absent
    (mark_ready publishes only the version, deductions no ``access``)."""
    try:
        body = json.loads(data)  # type: ignore[arg-type]
        version, written, access = body["version"], body.get("written"), body.get("access")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, None, None
    if not _is_int(version):
        return None, None, None
    return version, _int_or_none(written), _int_or_none(access)


def _int_or_none(value: object) -> int | None:
    return value if _is_int(value) else None  # type: ignore[return-value]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _close(feed: ChangeFeed | None) -> None:
    if feed is not None:
        feed.close()
