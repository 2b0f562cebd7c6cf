"""Tenant ids checked at every entry: the rule is ``config.tenancy``'s, the error is ours."""

from config.tenancy import is_valid_tenant
from crmcache.errors import InvalidTenant

__all__ = ["is_valid_tenant", "validate_tenant"]


def validate_tenant(tenant: object) -> str:
    """Return the tenant id unchanged, or raise InvalidTenant."""
    if not is_valid_tenant(tenant):
        raise InvalidTenant(f"invalid tenant id {tenant!r}")
    assert isinstance(tenant, str)
    return tenant
