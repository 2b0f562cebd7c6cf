"""The Wrapper API client (docs/wrapper-api.md): the one place that speaks HTTP to the source
of truth.

One ``requests.Session`` per client, connect and read timeouts on every call, bounded retries
with backoff on connection errors and 5xx (urllib3's ``Retry``), a circuit breaker per tenant
(``breaker.CircuitBreaker``), and every failure translated into ``WrapperError`` types.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from config.settings import Settings
from crmcache.breaker import CircuitBreaker
from crmcache.errors import WrapperError, WrapperNotFound, WrapperUnavailable
from crmcache.tenancy import is_valid_tenant, validate_tenant

MAX_PAGES = 100_000


class _ServerFault(Exception):
    """A failure that counts against the breaker (connection error, timeout, 5xx)."""


class WrapperClient:
    """Calls the Wrapper on behalf of any tenant; thread-safe, one connection pool."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.wrapper_api_url.rstrip("/")
        self.timeout = (settings.wrapper_connect_timeout, settings.wrapper_read_timeout)
        self._breaker_failures = settings.wrapper_breaker_failures
        self._breaker_reset = settings.wrapper_breaker_reset
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        retry = Retry(
            total=settings.wrapper_retries,
            connect=settings.wrapper_retries,
            read=settings.wrapper_retries,
            status=settings.wrapper_retries,
            backoff_factor=0.1,
            backoff_max=2.0,
            status_forcelist=(500, 502, 503, 504),
            # consume is idempotent by its key, so retrying a POST is safe here.
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        token = settings.wrapper_api_token.get_secret_value()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/json"

    def close(self) -> None:
        self.session.close()

    # --- the calls of docs/wrapper-api.md --------------------------------------------------

    def credit_configs(self, tenant: str) -> list[dict[str, Any]]:
        return _list(self.get_json(tenant, "/api/credits/configs"), "credit configs")

    def roles(self, tenant: str) -> list[dict[str, Any]]:
        return _list(self.get_json(tenant, "/api/roles"), "roles")

    def user_access(self, tenant: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every user's access, following ``nextCursor`` through all pages."""
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self.get_json(tenant, "/api/users/access", params=params)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise WrapperError("user access page is not {items: [...], nextCursor}")
            yield from page["items"]
            cursor = page.get("nextCursor")
            if not cursor:
                return
        raise WrapperError(f"user access has more than {MAX_PAGES} pages")

    def user_profile(self, tenant: str, user_id: str) -> Any:
        return self.get_json(tenant, f"/api/users/{quote(user_id, safe='')}/profile")

    def hierarchy(self, tenant: str, entity_id: str) -> Any:
        return self.get_json(tenant, f"/api/hierarchy/{quote(entity_id, safe='')}")

    def user_credits(self, tenant: str, user_id: str) -> Any:
        return self.get_json(tenant, f"/api/users/{quote(user_id, safe='')}/credits")

    def consume_credits(self, tenant: str, body: dict[str, Any]) -> Any:
        return self.request_json(tenant, "POST", "/api/credits/consume", json=body)

    def tenants(self) -> list[str]:
        """Tenant ids from ``GET /api/tenants``; invalid ids are dropped."""
        items = _list(self.request_json(None, "GET", "/api/tenants"), "tenants")
        return [t["tenantId"] for t in items if is_valid_tenant(t.get("tenantId"))]

    # --- plumbing ------------------------------------------------------------------------------

    def get_json(self, tenant: str, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request_json(tenant, "GET", path, params=params)

    def breaker(self, tenant: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(tenant)
            if breaker is None:
                breaker = CircuitBreaker(self._breaker_failures, self._breaker_reset)
                self._breakers[tenant] = breaker
            return breaker

    def breaker_state(self, tenant: str) -> str:
        return str(self.breaker(tenant).state)

    def request_json(self, tenant: str | None, method: str, path: str, **kwargs: Any) -> Any:
        """One call with timeouts, retries and the tenant's breaker; WrapperError on failure."""
        url = f"{self.base_url}{path}"
        if tenant is None:
            try:
                return self._send(method, url, {}, kwargs)
            except _ServerFault as exc:
                raise WrapperUnavailable(str(exc)) from None
        headers = {"X-Tenant-ID": validate_tenant(tenant)}
        breaker = self.breaker(tenant)
        if not breaker.allow():
            raise WrapperUnavailable(f"Wrapper circuit open for tenant {tenant}")
        try:
            result = self._send(method, url, headers, kwargs)
        except _ServerFault as exc:
            breaker.record_failure()
            raise WrapperUnavailable(str(exc)) from None
        except WrapperError:
            breaker.record_success()  # the Wrapper answered: it is up
            raise
        breaker.record_success()
        return result

    def _send(self, method: str, url: str, headers: dict[str, str], kwargs: dict[str, Any]) -> Any:
        try:
            response = self.session.request(
                method, url, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise _ServerFault(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 500:
            raise _ServerFault(f"{method} {url}: HTTP {response.status_code}")
        if response.status_code == 404:
            raise WrapperNotFound(f"{method} {url}: 404")
        if response.status_code >= 400:
            raise WrapperError(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise WrapperError(f"{method} {url}: response is not JSON") from None


def _list(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise WrapperError(f"{what}: expected a JSON list of objects")
    return value
