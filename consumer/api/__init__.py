"""The HTTP API (ASGI, FastAPI): the seed's endpoints, tenant-bound API keys, credits and leads.

Run it with ``crmcache api``; build it with ``create_app(settings)``.
"""

from consumer.api.app import create_app

__all__ = ["create_app"]
