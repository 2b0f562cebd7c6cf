"""The subscriber (Redis pub/sub -> Celery) and the read side (SmartCRMConsumer)."""
