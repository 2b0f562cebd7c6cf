"""The HTTP API's, credits' and Flower's settings, a part of config/settings.py's `Settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from config.settings_env import env
from config.tenancy import is_valid_tenant


class ApiSettings(BaseSettings):
    """Fields of the HTTP API, the credits ledger and Flower; `Settings` inherits them."""

    # --- HTTP API and credits ---------------------------------------------------------------
    api_keys: SecretStr = Field(default=SecretStr(""), validation_alias=env("CRM_API_KEYS"))
    """Comma-separated ``tenant:key`` pairs; a key may be ``sha256:<hex digest>``."""
    api_host: str = Field(default="127.0.0.1", validation_alias=env("CRM_API_HOST"))
    api_port: int = Field(default=8080, ge=1, le=65535, validation_alias=env("CRM_API_PORT"))
    api_workers: int = Field(default=1, ge=1, le=64, validation_alias=env("CRM_API_WORKERS"))
    api_threads: int = Field(default=40, ge=1, le=1000, validation_alias=env("CRM_API_THREADS"))
    idempotency_ttl: int = Field(
        default=86_400, ge=60, le=30 * 86_400, validation_alias=env("CRM_IDEMPOTENCY_TTL")
    )
    settle_batch: int = Field(
        default=100, ge=1, le=10_000, validation_alias=env("CRM_SETTLE_BATCH")
    )
    settle_sweep_interval: float = Field(
        default=30.0, ge=1, le=3600, validation_alias=env("CRM_SETTLE_SWEEP_INTERVAL")
    )
    settle_claim_idle: float = Field(
        default=60.0, ge=0.1, le=86_400, validation_alias=env("CRM_SETTLE_CLAIM_IDLE")
    )
    settle_max_retries: int = Field(
        default=10, ge=0, le=1000, validation_alias=env("CRM_SETTLE_MAX_RETRIES")
    )
    hold_timeout: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=env("CRM_HOLD_TIMEOUT")
    )
    """Seconds a credit reservation waits for its commit before it voids itself."""
    reconcile_interval: float = Field(
        default=15.0, ge=1, le=3600, validation_alias=env("CRM_RECONCILE_INTERVAL")
    )
    """Seconds between beat runs of the reconciler (overdue holds, leads not yet charged)."""
    credits_low_threshold: str = Field(
        default="", validation_alias=env("CRM_CREDITS_LOW_THRESHOLD")
    )
    """``N`` for every tenant and/or ``tenant:N`` pairs, comma-separated; empty: no alerts."""
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///.crmcache/leads.sqlite3"),
        validation_alias=env("CRM_DATABASE_URL"),
    )
    """SQLAlchemy URL of the leads database (the SQLite default is relative to the cwd)."""

    # --- Flower ------------------------------------------------------------------------------
    flower_basic_auth: SecretStr | None = Field(
        default=None, validation_alias=env("FLOWER_BASIC_AUTH")
    )
    """``user:password`` (comma-separated for several); Flower refuses to start without it."""

    @field_validator("flower_basic_auth", mode="after")
    @classmethod
    def _check_flower_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        for position, credential in enumerate(value.get_secret_value().split(","), start=1):
            user, sep, password = credential.partition(":")
            if not (user.strip() and sep and password):
                raise ValueError(f"entry {position} is not user:password")
        return value

    @field_validator("api_keys", mode="after")
    @classmethod
    def _check_api_keys(cls, value: SecretStr) -> SecretStr:
        from config.apikeys import parse_api_keys

        parse_api_keys(value.get_secret_value())  # raises ValueError naming the bad entry
        return value

    @field_validator("credits_low_threshold", mode="after")
    @classmethod
    def _check_low_threshold(cls, value: str) -> str:
        _low_thresholds(value)  # raises ValueError naming the bad entry
        return value

    def low_balance_threshold(self, tenant: str) -> float | None:
        """The tenant's low-balance threshold (CRM_CREDITS_LOW_THRESHOLD), None: no alerts."""
        thresholds = _low_thresholds(self.credits_low_threshold)
        return thresholds.get(tenant, thresholds.get("*"))


def _low_thresholds(text: str) -> dict[str, float]:
    """``"5,acme:10"`` -> {"*": 5.0, "acme": 10.0}."""
    thresholds: dict[str, float] = {}
    for position, entry in enumerate(filter(None, (p.strip() for p in text.split(","))), 1):
        tenant, _, number = entry.rpartition(":")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"entry {position} is not N or tenant:N") from None
        if not (value >= 0 and (not tenant or is_valid_tenant(tenant))):
            raise ValueError(f"entry {position} is not N or tenant:N with N >= 0")
        thresholds[tenant or "*"] = value
    return thresholds
