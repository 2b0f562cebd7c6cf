"""The read client: ``CRMCache`` (every tenant of a process: cache.py), its per-tenant views
(``TenantView``, view.py; ``SmartCRMConsumer``, client.py), and what answers them (near-cache,
Redis through one seam, the Wrapper)."""
