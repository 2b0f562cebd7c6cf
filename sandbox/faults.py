"""Fault injection: make chosen Wrapper API requests slow, fail, or vanish."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sandbox.errors import InvalidInput

ADMIN_PREFIX = "/_admin"


@dataclass
class Fault:
    """What to do to requests whose path starts with ``path_prefix``.

    ``status``: answer this HTTP status with a JSON error. ``delay``: sleep first. ``drop``: close
    the connection without answering. ``after``: handle the request for real first, then answer
    ``status`` / drop (an answer lost on the way back). ``times``: how many more requests it hits
    (None: until cleared).
    """

    status: int | None = None
    delay: float = 0.0
    path_prefix: str = ""
    times: int | None = None
    drop: bool = False
    after: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and (
            isinstance(self.status, bool)
            or not isinstance(self.status, int)
            or not 100 <= self.status <= 599
        ):
            raise InvalidInput("status must be an HTTP status code (100-599) or null")
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float):
            raise InvalidInput("delay must be a number of seconds")
        if not 0 <= self.delay <= 3600:
            raise InvalidInput("delay must be between 0 and 3600 seconds")
        if not isinstance(self.path_prefix, str):
            raise InvalidInput("pathPrefix must be a string")
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1
        ):
            raise InvalidInput("times must be a positive integer or null")
        if self.status is None and not self.delay and not self.drop:
            raise InvalidInput("a fault needs a status, a delay or drop")

    def matches(self, path: str) -> bool:
        # Faults model the Wrapper API failing; the sandbox's own admin endpoints stay usable
        # unless a fault names them explicitly.
        if path.startswith(ADMIN_PREFIX) and not self.path_prefix.startswith(ADMIN_PREFIX):
            return False
        return path.startswith(self.path_prefix)


class FaultInjector:
    """The active faults, oldest first; the first one matching a request applies to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, path: str) -> Fault | None:
        """The fault for this request, counting it against the fault's ``times``."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(path):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None
