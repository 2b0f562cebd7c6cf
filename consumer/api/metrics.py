"""Prometheus metrics of one API process (a registry per app, so tests can build many apps).

With ``--workers N`` each worker process keeps its own numbers; scrape them through the
per-process port of your process manager, or run one worker per container.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from consumer.api.readers import Readers

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReaderCollector(Collector):
    """Each started tenant reader's ``get_metrics()`` numbers, as gauges at scrape time."""

    def __init__(self, readers: Readers) -> None:
        self.readers = readers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for tenant, reader in sorted(self.readers.started().items()):
            try:
                numbers = reader.get_metrics()
            except Exception as exc:
                logger.warning("tenant=%s get_metrics failed: %r", tenant, exc)
                continue
            for name, value in numbers.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                family = families.get(name)
                if family is None:
                    family = GaugeMetricFamily(
                        f"crmcache_reader_{_snake(name)}",
                        f"SmartCRMConsumer.get_metrics()['{name}']",
                        labels=["tenant"],
                    )
                    families[name] = family
                family.add_metric([tenant], float(value))
        yield from families.values()


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).strip("_")


class ApiMetrics:
    def __init__(self, readers: Readers) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "crmcache_http_request_duration_seconds",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.deductions = Counter(
            "crmcache_credit_deductions",
            "Credit deductions by tenant and outcome",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.credits_low = Counter(
            "crmcache_credits_low",
            "Users whose available balance crossed below the tenant's low-balance threshold",
            ["tenant"],
            registry=self.registry,
        )
        self.registry.register(ReaderCollector(readers))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every request and labels it with its route template (bounded cardinality)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).observe(
                time.perf_counter() - start
            )


def _route_template(scope: Scope) -> str:
    # FastAPI leaves the matched route in the scope (the router updates it in place).
    route: Any = scope.get("route")
    return str(getattr(route, "path", "<unmatched>"))
