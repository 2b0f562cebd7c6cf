"""The consumers of the event stream, in three packages:

- ``consumer.ingest``: the subscriber (Redis pub/sub -> Celery tasks);
- ``consumer.read``: the read client, ``CRMCache`` (every tenant of a process) and
  ``SmartCRMConsumer`` (one tenant's view over it);
- ``consumer.api``: the HTTP API over the read client.

``from consumer import SmartCRMConsumer`` (or ``CRMCache``) loads the read client on first
use, so that ``python -m consumer`` (the subscriber) never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumer.read.cache import CRMCache
    from consumer.read.client import SmartCRMConsumer
    from consumer.read.results import CreditCost, PermissionCheck, ReferenceResult

__all__ = ["CRMCache", "CreditCost", "PermissionCheck", "ReferenceResult", "SmartCRMConsumer"]


def __getattr__(name: str) -> Any:
    if name == "SmartCRMConsumer":
        from consumer.read.client import SmartCRMConsumer

        return SmartCRMConsumer
    if name == "CRMCache":
        from consumer.read.cache import CRMCache

        return CRMCache
    if name in ("CreditCost", "PermissionCheck", "ReferenceResult"):
        from consumer.read import results

        return getattr(results, name)
    raise AttributeError(f"module 'consumer' has no attribute {name!r}")
