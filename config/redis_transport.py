"""A fix for kombu's Redis transport: a worker must survive its broker dying mid-BRPOP.

kombu (since 5.3, celery/kombu#1733; still so in 5.7.0) reads the reply of an outstanding BRPOP
when a channel closes, so that a task Redis already popped is not lost. When the broker is
gone that read raises ``ConnectionError`` and the close stops half-way, the channel still
marked open. Celery's consumer then closes the connection a second time, after
``Connection.collect()`` has detached the transport from its connection; the second close
restores the unacknowledged messages through a new pool built from ``transport.client``, which
is ``None`` by then: ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which
Celery treats as unrecoverable, and the worker exits (rc 1) instead of reconnecting.

The patch below drains that reply itself and, when the connection is lost, carries on closing:
the reply is lost either way, and the message it carried is still in Redis's unacked hash when
the broker keeps its data (restored after the visibility timeout; crmcache's subscriber also
re-sends an apply_events batch it does not see applied, consumer/ingest/inflight.py).
"""

from __future__ import annotations

from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

_PATCHED = "_crmcache_close_survives_lost_broker"


def patch_channel_close() -> None:
    """Make ``kombu.transport.redis.Channel.close`` (and the Sentinel channel, a subclass)
    finish closing when the outstanding BRPOP's reply cannot be read. Idempotent."""
    channel_class: Any = kombu_redis.Channel
    if getattr(channel_class.close, _PATCHED, False):
        return
    original: Callable[[Any], None] = channel_class.close

    def close(self: Any) -> None:
        if self._in_poll:
            try:
                self._brpop_read()  # delivers a popped message, as kombu's own close does
            except Empty:
                pass
            except self.connection_errors:
                pass  # _brpop_read dropped the connection and cleared _in_poll
        original(self)

    setattr(close, _PATCHED, True)
    close.__doc__ = original.__doc__
    channel_class.close = close
