"""Log a recurring failure once per reason, not once per message.

A flood of one bad message (or one bug hit by every message) would otherwise write a log line,
or a traceback, per message: tens of thousands a second, slowing the loop that logs them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class ReasonLog:
    """The reasons seen lately (the `size` most recent), to log each one only the first time.
    Thread-safe: a worker's thread pool shares one."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, reason: str) -> bool:
        """True the first time `reason` is seen (again after it dropped out of the recent ones)."""
        with self._lock:
            if reason in self._seen:
                self._seen.move_to_end(reason)
                return False
            self._seen[reason] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True
