"""Dependencies shared by the routes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

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


def flag(result: Any, name: str) -> bool:
    return bool(getattr(result, name, False))


def iso_time(value: Any) -> str | None:
    """A reader's expiry (epoch seconds or ms, datetime, or text) as ISO-8601 UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        return iso_time(datetime.fromtimestamp(seconds, UTC))
    return str(value)
