"""API keys of the HTTP service (``CRM_API_KEYS``): each key is bound to exactly one tenant.

Format: comma-separated ``tenant:key`` pairs. A key written ``sha256:<64 hex digits>`` is the
SHA-256 digest of the real key, so production configuration need not hold plain secrets. Every
lookup hashes the presented key and compares it in constant time against every configured
digest (the loop never stops early), so timing tells nothing about which keys exist.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from config.tenancy import is_valid_tenant

_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_KEY_LENGTH = 512


@dataclass(frozen=True)
class ApiKey:
    tenant: str
    digest: bytes
    """SHA-256 of the key."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """Parse ``CRM_API_KEYS``; ValueError names the bad entry by position, never its secret."""
    keys: list[ApiKey] = []
    digests: set[bytes] = set()
    for position, raw in enumerate((part.strip() for part in text.split(",")), start=1):
        if not raw:
            continue
        tenant, sep, secret = raw.partition(":")
        if not sep or not secret:
            raise ValueError(f"entry {position} is not tenant:key")
        if not is_valid_tenant(tenant):
            raise ValueError(f"entry {position} has an invalid tenant id {tenant[:64]!r}")
        if secret.startswith("sha256:"):
            hexdigest = secret.removeprefix("sha256:")
            if not _HEX_DIGEST.fullmatch(hexdigest):
                raise ValueError(f"entry {position}: sha256: must be followed by 64 hex digits")
            digest = bytes.fromhex(hexdigest)
        else:
            if len(secret) > MAX_KEY_LENGTH or not secret.isprintable() or " " in secret:
                raise ValueError(f"entry {position}: a key is printable, without spaces")
            digest = _digest(secret)
        if digest in digests:
            raise ValueError(f"entry {position} repeats a key: each key belongs to one tenant")
        digests.add(digest)
        keys.append(ApiKey(tenant, digest))
    return tuple(keys)


class ApiKeyRing:
    """Answers 'which tenant does this key belong to?' in constant time."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = keys

    @classmethod
    def from_config(cls, text: str) -> ApiKeyRing:
        return cls(parse_api_keys(text))

    def __len__(self) -> int:
        return len(self._keys)

    def tenants(self) -> list[str]:
        """The tenants that have at least one key (the tenants this API serves)."""
        return sorted({key.tenant for key in self._keys})

    def tenant_of(self, presented: str | None) -> str | None:
        """The tenant bound to `presented`, or None for a missing or unknown key."""
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        digest = _digest(presented)
        found: str | None = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key.tenant
        return found
