"""The read side's settings (TTLs, near cache, reader timeouts, metrics), a part of
config/settings.py's `Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from config.settings_env import env


class ReadSettings(BaseSettings):
    """Fields of the read client (consumer/read/); `Settings` inherits them."""

    # --- Read side --------------------------------------------------------------------------
    profile_ttl: int = Field(default=300, ge=1, validation_alias=env("CRM_PROFILE_TTL"))
    hierarchy_ttl: int = Field(default=900, ge=1, validation_alias=env("CRM_HIERARCHY_TTL"))
    hit_rate_threshold: float = Field(
        default=0.95, ge=0, le=1, validation_alias=env("CRM_HIT_RATE_THRESHOLD")
    )
    near_cache: bool = Field(default=True, validation_alias=env("CRM_NEAR_CACHE"))
    """Keep critical data in each reader process (off: every critical read asks Redis)."""
    near_cache_staleness_ms: int = Field(
        default=250, ge=10, le=600_000, validation_alias=env("CRM_NEAR_CACHE_STALENESS_MS")
    )
    """Hard bound: a near-cache answer is confirmed against meta.version at most this old (so a
    lost change notification is outlived by at most this much). Its cost, a version check per
    held tenant every half bound: benchmarks/version_check_bench.py, docs/read-side.md."""
    consistency_wait_ms: int = Field(
        default=500, ge=0, le=60_000, validation_alias=env("CRM_CONSISTENCY_WAIT_MS")
    )
    """How long an at_least_as_fresh read waits for Redis to reach its token before it fails
    (TokenNotReached)."""
    near_cache_max_entries: int = Field(
        default=500_000, ge=100, validation_alias=env("CRM_NEAR_CACHE_MAX_ENTRIES")
    )
    """Near-cache entries of a reader process across all its tenants, shared fairly (a tenant
    under its share takes room from the one holding most; consumer/read/budget.py)."""
    tenant_idle_timeout: float = Field(
        default=300.0, ge=0, le=7 * 86_400, validation_alias=env("CRM_TENANT_IDLE_TIMEOUT")
    )
    """Seconds without a read after which a reader process forgets a tenant (its near-cache,
    counters and version checks); its next read loads it again. 0: never."""
    near_cache_warm_max: int = Field(
        default=50_000, ge=0, validation_alias=env("CRM_NEAR_CACHE_WARM_MAX")
    )
    """initialize() loads a critical hash whole when it has at most this many fields."""
    reader_timeout_ms: int = Field(
        default=500, ge=10, le=60_000, validation_alias=env("CRM_READER_TIMEOUT_MS")
    )
    """Socket timeout of a reader's Redis calls: past it the reader answers degraded."""
    degraded_max_age: float = Field(
        default=300.0, gt=0, le=86_400, validation_alias=env("CRM_DEGRADED_MAX_AGE")
    )
    """Seconds: the oldest last-known-good critical data a reader serves while Redis is down."""
    reference_stale_max_age: float = Field(
        default=3600.0, ge=0, le=7 * 86_400, validation_alias=env("CRM_REFERENCE_MAX_STALE")
    )
    """Seconds past its expiry a reference entry may still be served when the Wrapper fails."""
    negative_ttl: int = Field(default=30, ge=1, le=86_400, validation_alias=env("CRM_NEGATIVE_TTL"))
    """Seconds a Wrapper 404 is cached as a negative reference entry."""
    lease_ttl_ms: int = Field(
        default=15_000, ge=100, le=600_000, validation_alias=env("CRM_LEASE_TTL_MS")
    )
    lease_error_ttl_ms: int = Field(
        default=1000, ge=0, le=600_000, validation_alias=env("CRM_LEASE_ERROR_TTL_MS")
    )
    """After a failed upstream fetch, other callers serve stale instead of refetching this long."""
    reference_local_max_entries: int = Field(
        default=10_000, ge=0, validation_alias=env("CRM_REFERENCE_LOCAL_MAX_ENTRIES")
    )
    reader_requests_preload: bool = Field(
        default=True, validation_alias=env("CRM_READER_REQUESTS_PRELOAD")
    )
    """A reader of a never-loaded tenant enqueues crmcache.preload_tenant (at most once per
    CRM_PRELOAD_REQUEST_INTERVAL across all readers)."""
    preload_request_interval: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=env("CRM_PRELOAD_REQUEST_INTERVAL")
    )
    metrics_flush_interval: float = Field(
        default=10.0, gt=0, le=3600, validation_alias=env("CRM_METRICS_FLUSH_INTERVAL")
    )
    metrics_publish_interval: float = Field(
        default=30.0, ge=1, le=86_400, validation_alias=env("CRM_METRICS_PUBLISH_INTERVAL")
    )
