"""Dependencies shared by the routes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import Request

from consumer.api.service import ApiService


def service_of(request: Request) -> ApiService:
    service: ApiService = request.app.state.service
    return service


class Stopwatch:
    """Measures a handler's own time, for the seed's ``responseTime`` (measured, not printed)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.start) * 1000, 3)


def iso_time(epoch_s: float | None) -> str | None:
    """An answer's expiry (epoch seconds) as ISO-8601 UTC, milliseconds."""
    if epoch_s is None:
        return None
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
