"""Constants and helpers of the HTTP API tests (fixtures: ``tests/api_fixtures.py``)."""

from __future__ import annotations

import hashlib
from typing import Any

ACME_KEY = "acme-secret-key"
GLOBEX_KEY = "globex-secret-key"
ACME = {"X-API-Key": ACME_KEY}
GLOBEX = {"Authorization": f"Bearer {GLOBEX_KEY}"}
# globex's key is configured as a digest only: production configuration holds no plain secret.
API_KEYS = f"acme:{ACME_KEY},globex:sha256:{hashlib.sha256(GLOBEX_KEY.encode()).hexdigest()}"


def lead_body(user: str = "user-456", name: str = "Jane Prospect", **extra: Any) -> dict[str, Any]:
    return {"userId": user, "leadData": {"name": name, "email": "jane@example.com", **extra}}
