"""Ingest: Redis pub/sub messages in, Celery ``apply_events`` tasks out (the subscriber).

Validates, stamps and micro-batches events per tenant; loads neither the read client nor the
HTTP API.
"""
