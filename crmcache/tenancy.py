"""Tenant id validation: the one rule every key, channel and API request goes through."""

import re

from crmcache.errors import InvalidTenant

TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_valid_tenant(tenant: object) -> bool:
    return isinstance(tenant, str) and TENANT_ID_RE.fullmatch(tenant) is not None


def validate_tenant(tenant: object) -> str:
    """Return the tenant id unchanged, or raise InvalidTenant."""
    if not is_valid_tenant(tenant):
        raise InvalidTenant(f"invalid tenant id {tenant!r}")
    assert isinstance(tenant, str)
    return tenant
