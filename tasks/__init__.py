"""The Celery app and every task: ``celery -A tasks worker|beat|flower`` from the repo root."""

from tasks import credits, events, metrics, preload  # noqa: F401  (registers the tasks)
from tasks.app import app

__all__ = ["app"]
