"""The API's reader of each tenant its keys name: a view over the process's one ``CRMCache``
(one Redis pool and one notification connection for every tenant), initialized on the
tenant's first request.

The HTTP layer depends only on the small ``TenantReader`` protocol below, so the read side can
evolve (or be replaced in a test) without touching the routes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from config.settings import Settings
from consumer.read.consistency import Consistency
from consumer.read.results import CreditCost, Number, PermissionCheck, ReferenceResult

logger = logging.getLogger(__name__)


class TenantReader(Protocol):
    """What the API needs from a tenant's reader (``consumer.read.view.TenantView``)."""

    def initialize(self) -> object: ...

    def shutdown(self) -> None: ...

    def get_credit_cost(self, operation_code: str) -> Number | None: ...

    def get_credit_cost_detail(
        self, operation_code: str, consistency: Consistency | None = None
    ) -> CreditCost: ...

    def check_permission(self, user_id: str, permission: str) -> bool: ...

    def check_permission_detail(
        self, user_id: str, permission: str, consistency: Consistency | None = None
    ) -> PermissionCheck: ...

    def peek_credit_cost_detail(self, operation_code: str) -> CreditCost | None: ...

    def peek_permission_detail(self, user_id: str, permission: str) -> PermissionCheck | None: ...

    def peek_user_credits(self, user_id: str) -> Number | None: ...

    def keep_user_credits(
        self, user_id: str, value: Number, version: int, epoch: bytes
    ) -> bool: ...

    def get_user_profile(self, user_id: str) -> dict[str, Any] | None: ...

    def get_user_profile_detail(self, user_id: str) -> ReferenceResult: ...

    def get_user_credits(self, user_id: str) -> Number | None: ...

    def get_user_credits_detail(self, user_id: str) -> ReferenceResult: ...

    def get_metrics(self) -> dict[str, Any]: ...


ReaderFactory = Callable[[str, Settings], TenantReader]


class Readers:
    """Lazily built, initialized readers keyed by tenant; thread-safe."""

    def __init__(self, settings: Settings, factory: ReaderFactory) -> None:
        self.settings = settings
        self.factory = factory
        self._readers: dict[str, TenantReader] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str) -> TenantReader:
        reader = self._readers.get(tenant)
        if reader is not None:
            return reader
        with self._lock:  # one initialize per tenant, however many requests arrive at once
            reader = self._readers.get(tenant)
            if reader is None:
                reader = self.factory(tenant, self.settings)
                reader.initialize()
                self._readers[tenant] = reader
                logger.info("tenant=%s reader initialized", tenant)
        return reader

    def peek(self, tenant: str) -> TenantReader | None:
        """The tenant's reader if it was built already (no I/O, no copy)."""
        return self._readers.get(tenant)

    def started(self) -> dict[str, TenantReader]:
        return dict(self._readers)

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, {}
        for tenant, reader in readers.items():
            try:
                reader.shutdown()
            except Exception:
                logger.exception("tenant=%s reader shutdown failed", tenant)
