"""crmcache: keeps a multi-tenant CRM's critical and reference data correct, close and fast."""

__version__ = "0.1.0"
