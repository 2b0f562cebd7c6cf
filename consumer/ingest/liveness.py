"""A process's own health, for its container's healthcheck: a small status file it rewrites as
its loop goes round, and the check that reads it.

Why a file: a healthcheck runs as another process in the same container, and what it must
judge is *this* subscriber (alive, its loop turning, Redis answering it, active or standing
by), not the fleet: the leader lease in Redis says that some replica leads, and a frozen or
cut-off standby would look healthy beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

HEALTHY_ROLES = ("active", "standby")
"""What the subscriber's loop reports when Redis answered it; "reconnecting" otherwise."""


class StatusFile:
    """Writes ``{"pid", "token", "role", "atMs", "sinceMs"}`` to `path`: at most once a second
    while nothing changes, at once when the role does (renamed into place, never half-written)."""

    def __init__(self, path: str, token: str, every: float = 1.0) -> None:
        self.path = Path(path)
        self.token = token
        self.every = every
        self._role: str | None = None
        self._since_ms = 0
        self._written = 0.0

    def beat(self, role: str) -> None:
        now = time.monotonic()
        if role == self._role and now - self._written < self.every:
            return
        at_ms = int(time.time() * 1000)
        if role != self._role:
            self._role, self._since_ms = role, at_ms
        self._written = now
        status = {
            "pid": os.getpid(),
            "token": self.token,
            "role": role,
            "atMs": at_ms,
            "sinceMs": self._since_ms,
        }
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with contextlib.suppress(OSError):  # a full /tmp must not stop the subscriber
            temporary.write_text(json.dumps(status))
            os.replace(temporary, self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(path: str) -> dict[str, Any] | None:
    try:
        status = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def check_status(path: str, max_age: float, now_ms: int | None = None) -> tuple[bool, str]:
    """(healthy, what to say) for the process whose status file is `path`."""
    status = read_status(path)
    if status is None:
        return False, f"no status in {path} (the subscriber has not started its loop)"
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    pid, role = status.get("pid"), status.get("role")
    age = (now_ms - int(status.get("atMs", 0))) / 1000
    since = (now_ms - int(status.get("sinceMs", 0))) / 1000
    who = f"subscriber pid {pid}"
    if not isinstance(pid, int) or not _alive(pid):
        return False, f"{who} is not running"
    if age > max_age:
        return False, f"{who}: its loop last went round {age:.0f}s ago (stuck or frozen)"
    if role not in HEALTHY_ROLES:
        return False, f"{who} cannot reach Redis ({role} for {since:.0f}s)"
    doing = "active (holds the lease)" if role == "active" else "standing by"
    return True, f"{who}: {doing} for {since:.0f}s, connected, last beat {age:.1f}s ago"
