"""SmartCRMConsumer: the seed's per-tenant client, now a view over the process's shared client.

``SmartCRMConsumer("acme")`` keeps the seed's shape (one object per tenant, ``initialize()``
... ``shutdown()``) while every SmartCRMConsumer of a process with the same settings shares one
``CRMCache`` (consumer/read/cache.py): one Redis pool, one pub/sub connection, one background
thread, one Wrapper session. Usage::

    with SmartCRMConsumer("acme") as crm:
        cost = crm.get_credit_cost("crm.leads.create")  # a number; None: not configured
        if crm.check_permission("user-456", "crm.leads.create"):  # a bool
            ...

The methods are ``TenantView``'s (consumer/read/view.py). A process serving many tenants may
as well hold one ``CRMCache`` and call ``crm.tenant(t)``.
"""

from __future__ import annotations

import weakref

from config.settings import Settings, get_settings
from consumer.read.cache import CRMCache
from consumer.read.view import TenantView
from crmcache.tenancy import validate_tenant

__all__ = ["SmartCRMConsumer"]


class SmartCRMConsumer(TenantView):
    """One tenant's read API over ``CRMCache.shared(settings)``. Each instance holds a
    reference on that client; ``shutdown()`` (or the instance being collected) gives it back,
    and the last one closes the client."""

    def __init__(self, tenant_id: str, settings: Settings | None = None) -> None:
        validate_tenant(tenant_id)  # before taking a reference on the shared client
        cache = CRMCache.shared(settings or get_settings())
        super().__init__(cache, tenant_id)
        self._release = weakref.finalize(self, cache.release)
        self._release.atexit = False  # nothing to send at interpreter exit

    def shutdown(self) -> None:
        """Flush this tenant's metrics and give back the shared client. Idempotent."""
        if self.closed:
            return
        super().shutdown()
        self._release()
