"""The subscriber (Redis pub/sub -> Celery) and the read side (SmartCRMConsumer)."""

from consumer.reader import SmartCRMConsumer
from consumer.results import CreditCost, PermissionCheck, ReferenceResult

__all__ = ["CreditCost", "PermissionCheck", "ReferenceResult", "SmartCRMConsumer"]
