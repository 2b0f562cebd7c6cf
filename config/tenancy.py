"""The tenant id rule: the one pattern every key, channel, setting and API request goes through.

A pure predicate, here so that settings can check ``CRM_TENANTS`` without importing the core;
``crmcache.tenancy.validate_tenant`` raises the core's ``InvalidTenant`` with it.
"""

import re

TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_valid_tenant(tenant: object) -> bool:
    return isinstance(tenant, str) and TENANT_ID_RE.fullmatch(tenant) is not None
