"""The one typed settings object, read once from the environment (12-factor).

Every variable is documented in the README's configuration table. A bad value fails at start
with the variable's name (`ConfigError`), never later with a confusing traceback.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Annotated
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.tenancy import is_valid_tenant

PLACEHOLDER_SECRET = "change-me"
"""What .env.example's secrets say until someone sets real ones."""


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names the variable."""


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """All of crmcache's configuration. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", populate_by_name=True, frozen=True
    )

    # --- Redis (the cache) and the Celery broker -----------------------------------------
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    redis_host: str = Field(default="127.0.0.1", validation_alias=_env("REDIS_HOST"))
    redis_port: int = Field(default=6379, ge=1, le=65535, validation_alias=_env("REDIS_PORT"))
    redis_username: str | None = Field(default=None, validation_alias=_env("REDIS_USERNAME"))
    redis_password: SecretStr | None = Field(default=None, validation_alias=_env("REDIS_PASSWORD"))
    redis_socket_timeout: float = Field(
        default=5.0, gt=0, le=60, validation_alias=_env("CRM_REDIS_SOCKET_TIMEOUT")
    )
    redis_cluster: bool = Field(default=False, validation_alias=_env("CRM_REDIS_CLUSTER"))
    """REDIS_URL (or REDIS_HOST/PORT) names a node of a Redis Cluster: the same as giving
    REDIS_URL as redis+cluster://host:port (see config/redis_urls.py)."""
    celery_broker_url: str | None = Field(default=None, validation_alias=_env("CELERY_BROKER_URL"))

    # --- The Wrapper (upstream source of truth) ------------------------------------------
    wrapper_api_url: str = Field(
        default="http://127.0.0.1:8081", validation_alias=_env("WRAPPER_API_URL")
    )
    wrapper_api_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=_env("WRAPPER_API_TOKEN")
    )
    wrapper_connect_timeout: float = Field(
        default=2.0, gt=0, le=60, validation_alias=_env("CRM_WRAPPER_CONNECT_TIMEOUT")
    )
    wrapper_read_timeout: float = Field(
        default=5.0, gt=0, le=300, validation_alias=_env("CRM_WRAPPER_READ_TIMEOUT")
    )
    wrapper_retries: int = Field(
        default=3, ge=0, le=10, validation_alias=_env("CRM_WRAPPER_RETRIES")
    )
    wrapper_breaker_failures: int = Field(
        default=5, ge=1, le=1000, validation_alias=_env("CRM_WRAPPER_BREAKER_FAILURES")
    )
    wrapper_breaker_reset: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=_env("CRM_WRAPPER_BREAKER_RESET")
    )
    tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias=_env("CRM_TENANTS")
    )

    # --- Event pipeline -----------------------------------------------------------------
    batch_size: int = Field(default=100, ge=1, le=10_000, validation_alias=_env("CRM_BATCH_SIZE"))
    flush_interval_ms: float = Field(
        default=5.0, gt=0, le=10_000, validation_alias=_env("CRM_FLUSH_INTERVAL_MS")
    )
    event_lanes: bool = Field(default=True, validation_alias=_env("CRM_EVENT_LANES"))
    """Send flooding tenants' batches to the bulk lane (crm.events.bulk); see
    consumer/ingest/lanes.py."""
    bulk_threshold: int = Field(
        default=200, ge=1, le=1_000_000, validation_alias=_env("CRM_BULK_THRESHOLD")
    )
    """Events a tenant may send within about a second before its batches take the bulk lane."""
    bulk_batch_size: int = Field(
        default=200, ge=1, le=10_000, validation_alias=_env("CRM_BULK_BATCH_SIZE")
    )
    """Events per apply_events task in the bulk lane (fewer, larger tasks drain a flood faster)."""
    bulk_flush_interval_ms: float = Field(
        default=50.0, gt=0, le=10_000, validation_alias=_env("CRM_BULK_FLUSH_INTERVAL_MS")
    )
    """How long a bulk tenant's partial batch may wait to grow (its events only)."""
    bulk_max_rate: int = Field(
        default=2500, ge=0, le=10_000_000, validation_alias=_env("CRM_BULK_MAX_RATE")
    )
    """Events a second the subscriber reads from a pub/sub connection whose tenants are all bulk,
    when it has several connections (0: unlimited). The rest of a flood waits in Redis (the
    subscriber's output buffer, `client-output-buffer-limit pubsub`), so that it cannot take
    the CPU and the workers from other tenants."""
    subscriber_shards: int = Field(
        default=16, ge=1, le=1024, validation_alias=_env("CRM_SUBSCRIBER_SHARDS")
    )
    """Pub/sub connections the active subscriber spreads listed tenants (CRM_TENANTS) over, so
    that one tenant's flood cannot queue in front of another's messages; with at least as many
    connections as tenants each has its own (consumer/ingest/pubsub_shards.py)."""
    preload_interval: float = Field(
        default=300.0, ge=5, le=86_400, validation_alias=_env("CRM_PRELOAD_INTERVAL")
    )
    preload_concurrency: int = Field(
        default=8, ge=1, le=1000, validation_alias=_env("CRM_PRELOAD_CONCURRENCY")
    )
    """Preloads that may ask the Wrapper at once, across every worker (crmcache/preload_runs.py)."""
    preload_slot_wait: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=_env("CRM_PRELOAD_SLOT_WAIT")
    )
    """Seconds a preload waits for a free slot before it is retried later."""
    preload_page_size: int = Field(
        default=1000, ge=1, le=10_000, validation_alias=_env("CRM_PRELOAD_PAGE_SIZE")
    )
    dedupe_window: int = Field(
        default=86_400, ge=60, le=30 * 86_400, validation_alias=_env("CRM_DEDUPE_WINDOW")
    )
    tombstone_retention: int = Field(
        default=7 * 86_400,
        ge=60,
        le=365 * 86_400,
        validation_alias=_env("CRM_TOMBSTONE_RETENTION"),
    )
    """Seconds a resync keeps a deleted entity's version at least (up to about twice that), so
    that a late older event or replay of it stays refused (crmcache/lua/snapshot_commit.lua)."""
    dead_letter_maxlen: int = Field(
        default=100_000, ge=100, validation_alias=_env("CRM_DEAD_LETTER_MAXLEN")
    )
    max_event_bytes: int = Field(
        default=64 * 1024, ge=1024, le=1024 * 1024, validation_alias=_env("CRM_MAX_EVENT_BYTES")
    )
    max_event_depth: int = Field(
        default=32, ge=2, le=500, validation_alias=_env("CRM_MAX_EVENT_DEPTH")
    )
    """How deep a message may nest arrays and objects (the envelope is level 1): a deeper one is
    dead-lettered before it is decoded (Python's decoder recurses once per level)."""
    max_credit_value: int = Field(
        default=10**12, ge=1, le=2**53, validation_alias=_env("CRM_MAX_CREDIT_VALUE")
    )
    """The largest cost, top-up delta or balance an event may carry (either side of 0)."""

    # --- Subscriber liveness and leadership ------------------------------------------------
    health_check_interval: float = Field(
        default=2.0, gt=0, le=60, validation_alias=_env("CRM_HEALTH_CHECK_INTERVAL")
    )
    leader_lease: float = Field(default=3.0, ge=1, le=60, validation_alias=_env("CRM_LEADER_LEASE"))
    reconnect_max_delay: float = Field(
        default=5.0, gt=0, le=300, validation_alias=_env("CRM_RECONNECT_MAX_DELAY")
    )
    subscriber_status_file: str | None = Field(
        default=None, validation_alias=_env("CRM_SUBSCRIBER_STATUS_FILE")
    )
    """Where the subscriber keeps its own health (role, last loop turn) for its container
    healthcheck, ``python -m ops.healthcheck subscriber`` (consumer/ingest/liveness.py)."""

    # --- Celery ---------------------------------------------------------------------------
    task_time_limit: int = Field(default=120, ge=5, validation_alias=_env("CRM_TASK_TIME_LIMIT"))
    visibility_timeout: int = Field(
        default=3600, ge=10, validation_alias=_env("CRM_VISIBILITY_TIMEOUT")
    )
    publish_max_retries: int = Field(
        default=3, ge=0, le=20, validation_alias=_env("CRM_PUBLISH_MAX_RETRIES")
    )
    apply_soft_time_limit: float = Field(
        default=6.0, gt=0, le=3600, validation_alias=_env("CRM_APPLY_SOFT_TIME_LIMIT")
    )
    """Seconds: an apply_events task still running is interrupted and retried. A batch takes
    milliseconds; keep this above CRM_REDIS_SOCKET_TIMEOUT so that a stalled Redis call fails
    (and is retried) first."""
    apply_time_limit: float = Field(
        default=8.0, gt=0, le=3600, validation_alias=_env("CRM_APPLY_TIME_LIMIT")
    )
    """Seconds: the pool process of an apply_events task that has not finished, or not even
    started, is killed and the batch goes to another process (tasks/pool_watchdog.py)."""
    inflight_timeout: float = Field(
        default=5.0, ge=0, le=30, validation_alias=_env("CRM_INFLIGHT_TIMEOUT")
    )
    """Seconds a batch the subscriber sent may stay unapplied before it sends it again
    (consumer/ingest/inflight.py); 0: never re-send."""
    inflight_max_resends: int = Field(
        default=3, ge=0, le=100, validation_alias=_env("CRM_INFLIGHT_MAX_RESENDS")
    )
    """Re-sends of one batch before the subscriber gives up on it and resyncs its tenant."""

    # --- Logging ----------------------------------------------------------------------------
    log_level: str = Field(default="INFO", validation_alias=_env("CRM_LOG_LEVEL"))
    log_format: str = Field(
        default="text", pattern="^(text|json)$", validation_alias=_env("CRM_LOG_FORMAT")
    )

    # --- Read side --------------------------------------------------------------------------
    profile_ttl: int = Field(default=300, ge=1, validation_alias=_env("CRM_PROFILE_TTL"))
    hierarchy_ttl: int = Field(default=900, ge=1, validation_alias=_env("CRM_HIERARCHY_TTL"))
    hit_rate_threshold: float = Field(
        default=0.95, ge=0, le=1, validation_alias=_env("CRM_HIT_RATE_THRESHOLD")
    )
    near_cache: bool = Field(default=True, validation_alias=_env("CRM_NEAR_CACHE"))
    """Keep critical data in each reader process (off: every critical read asks Redis)."""
    near_cache_staleness_ms: int = Field(
        default=1000, ge=10, le=600_000, validation_alias=_env("CRM_NEAR_CACHE_STALENESS_MS")
    )
    """Hard bound: a near-cache answer is confirmed against meta.version at most this old."""
    # --- h13b: consistency levels (move with the reader's fields on the settings split) ---
    consistency_wait_ms: int = Field(
        default=500, ge=0, le=60_000, validation_alias=_env("CRM_CONSISTENCY_WAIT_MS")
    )
    """How long an at_least_as_fresh read waits for Redis to reach its token before it fails
    (TokenNotReached, HTTP 409)."""
    # --- end h13b ---
    near_cache_max_entries: int = Field(
        default=500_000, ge=100, validation_alias=_env("CRM_NEAR_CACHE_MAX_ENTRIES")
    )
    """Near-cache entries of a reader process across all its tenants, shared fairly (a tenant
    under its share takes room from the one holding most; consumer/read/budget.py)."""
    tenant_idle_timeout: float = Field(
        default=300.0, ge=0, le=7 * 86_400, validation_alias=_env("CRM_TENANT_IDLE_TIMEOUT")
    )
    """Seconds without a read after which a reader process forgets a tenant (its near-cache,
    counters and version checks); its next read loads it again. 0: never."""
    near_cache_warm_max: int = Field(
        default=50_000, ge=0, validation_alias=_env("CRM_NEAR_CACHE_WARM_MAX")
    )
    """initialize() loads a critical hash whole when it has at most this many fields."""
    reader_timeout_ms: int = Field(
        default=500, ge=10, le=60_000, validation_alias=_env("CRM_READER_TIMEOUT_MS")
    )
    """Socket timeout of a reader's Redis calls: past it the reader answers degraded."""
    degraded_max_age: float = Field(
        default=300.0, gt=0, le=86_400, validation_alias=_env("CRM_DEGRADED_MAX_AGE")
    )
    """Seconds: the oldest last-known-good critical data a reader serves while Redis is down."""
    reference_stale_max_age: float = Field(
        default=3600.0, ge=0, le=7 * 86_400, validation_alias=_env("CRM_REFERENCE_MAX_STALE")
    )
    """Seconds past its expiry a reference entry may still be served when the Wrapper fails."""
    negative_ttl: int = Field(
        default=30, ge=1, le=86_400, validation_alias=_env("CRM_NEGATIVE_TTL")
    )
    """Seconds a Wrapper 404 is cached as a negative reference entry."""
    lease_ttl_ms: int = Field(
        default=15_000, ge=100, le=600_000, validation_alias=_env("CRM_LEASE_TTL_MS")
    )
    lease_error_ttl_ms: int = Field(
        default=1000, ge=0, le=600_000, validation_alias=_env("CRM_LEASE_ERROR_TTL_MS")
    )
    """After a failed upstream fetch, other callers serve stale instead of refetching this long."""
    reference_local_max_entries: int = Field(
        default=10_000, ge=0, validation_alias=_env("CRM_REFERENCE_LOCAL_MAX_ENTRIES")
    )
    reader_requests_preload: bool = Field(
        default=True, validation_alias=_env("CRM_READER_REQUESTS_PRELOAD")
    )
    """A reader of a never-loaded tenant enqueues crmcache.preload_tenant (at most once per
    CRM_PRELOAD_REQUEST_INTERVAL across all readers)."""
    preload_request_interval: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=_env("CRM_PRELOAD_REQUEST_INTERVAL")
    )
    metrics_flush_interval: float = Field(
        default=10.0, gt=0, le=3600, validation_alias=_env("CRM_METRICS_FLUSH_INTERVAL")
    )
    metrics_publish_interval: float = Field(
        default=30.0, ge=1, le=86_400, validation_alias=_env("CRM_METRICS_PUBLISH_INTERVAL")
    )

    # --- HTTP API and credits ---------------------------------------------------------------
    api_keys: SecretStr = Field(default=SecretStr(""), validation_alias=_env("CRM_API_KEYS"))
    """Comma-separated ``tenant:key`` pairs; a key may be ``sha256:<hex digest>``."""
    api_host: str = Field(default="127.0.0.1", validation_alias=_env("CRM_API_HOST"))
    api_port: int = Field(default=8080, ge=1, le=65535, validation_alias=_env("CRM_API_PORT"))
    api_workers: int = Field(default=1, ge=1, le=64, validation_alias=_env("CRM_API_WORKERS"))
    api_threads: int = Field(default=40, ge=1, le=1000, validation_alias=_env("CRM_API_THREADS"))
    idempotency_ttl: int = Field(
        default=86_400, ge=60, le=30 * 86_400, validation_alias=_env("CRM_IDEMPOTENCY_TTL")
    )
    settle_batch: int = Field(
        default=100, ge=1, le=10_000, validation_alias=_env("CRM_SETTLE_BATCH")
    )
    settle_sweep_interval: float = Field(
        default=30.0, ge=1, le=3600, validation_alias=_env("CRM_SETTLE_SWEEP_INTERVAL")
    )
    settle_claim_idle: float = Field(
        default=60.0, ge=0.1, le=86_400, validation_alias=_env("CRM_SETTLE_CLAIM_IDLE")
    )
    settle_max_retries: int = Field(
        default=10, ge=0, le=1000, validation_alias=_env("CRM_SETTLE_MAX_RETRIES")
    )
    hold_timeout: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=_env("CRM_HOLD_TIMEOUT")
    )
    """Seconds a credit reservation waits for its commit before it voids itself."""
    reconcile_interval: float = Field(
        default=15.0, ge=1, le=3600, validation_alias=_env("CRM_RECONCILE_INTERVAL")
    )
    """Seconds between beat runs of the reconciler (overdue holds, leads not yet charged)."""
    credits_low_threshold: str = Field(
        default="", validation_alias=_env("CRM_CREDITS_LOW_THRESHOLD")
    )
    """``N`` for every tenant and/or ``tenant:N`` pairs, comma-separated; empty: no alerts."""
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///.crmcache/leads.sqlite3"),
        validation_alias=_env("CRM_DATABASE_URL"),
    )
    """SQLAlchemy URL of the leads database (the SQLite default is relative to the cwd)."""

    # --- Flower ------------------------------------------------------------------------------
    flower_basic_auth: SecretStr | None = Field(
        default=None, validation_alias=_env("FLOWER_BASIC_AUTH")
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

    @field_validator(
        "wrapper_api_token",
        "api_keys",
        "flower_basic_auth",
        "redis_password",
        "redis_url",
        "celery_broker_url",
        "database_url",
        mode="after",
    )
    @classmethod
    def _no_placeholder_secret(cls, value: SecretStr | str | None) -> SecretStr | str | None:
        """.env.example's secrets say change-me: a copy that was not edited must not run."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text and PLACEHOLDER_SECRET in text.lower():
            raise ValueError(f"still says {PLACEHOLDER_SECRET} (.env.example): set a real secret")
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

    @field_validator("tenants", mode="before")
    @classmethod
    def _split_tenants(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            for tenant in value:
                if not is_valid_tenant(tenant):
                    raise ValueError(f"invalid tenant id {tenant!r}")
        return value

    @model_validator(mode="after")
    def _visibility_above_time_limit(self) -> Settings:
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "CRM_VISIBILITY_TIMEOUT must exceed CRM_TASK_TIME_LIMIT, or a running task is "
                "delivered twice"
            )
        return self

    @model_validator(mode="after")
    def _holds_outlived_by_their_records(self) -> Settings:
        if self.hold_timeout >= self.idempotency_ttl:
            raise ValueError("CRM_HOLD_TIMEOUT must be below CRM_IDEMPOTENCY_TTL")
        return self

    @model_validator(mode="after")
    def _apply_limits_ordered(self) -> Settings:
        if self.apply_soft_time_limit >= self.apply_time_limit:
            raise ValueError("CRM_APPLY_SOFT_TIME_LIMIT must be below CRM_APPLY_TIME_LIMIT")
        if self.apply_time_limit >= self.visibility_timeout:
            raise ValueError(
                "CRM_VISIBILITY_TIMEOUT must exceed CRM_APPLY_TIME_LIMIT, or a running batch "
                "is delivered twice"
            )
        return self

    @model_validator(mode="after")
    def _redis_urls_usable(self) -> Settings:
        from config.redis_urls import RedisUrlError, kombu_broker, parse_redis_url

        try:
            parse_redis_url(self.cache_url)
        except RedisUrlError as exc:
            raise ValueError(f"REDIS_URL: {exc}") from None
        try:
            kombu_broker(self.broker_url)
        except RedisUrlError as exc:
            hint = "" if self.celery_broker_url else " (it defaults to REDIS_URL: set it)"
            raise ValueError(f"CELERY_BROKER_URL: {exc}{hint}") from None
        return self

    @property
    def cache_url(self) -> str:
        """The Redis URL of the cache: REDIS_URL, else one built from the seed's REDIS_* parts;
        with CRM_REDIS_CLUSTER, a redis+cluster:// URL of the same node."""
        url = self._plain_cache_url()
        if self.redis_cluster and url.startswith(("redis://", "rediss://")):
            scheme, rest = url.split("://", 1)
            host_part = rest.split("/", 1)[0]
            return f"{scheme}+cluster://{host_part}"
        return url

    def _plain_cache_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        auth = ""
        if self.redis_username or self.redis_password:
            user = quote(self.redis_username or "", safe="")
            password = (
                quote(self.redis_password.get_secret_value(), safe="")
                if (self.redis_password)
                else ""
            )
            auth = f"{user}:{password}@"
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/0"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.cache_url


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


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides); raise ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def settings_or_exit(program: str) -> Settings:
    """The process-wide settings, or exit 2 with one line naming the bad variable: for entry
    points that would otherwise print a traceback (Celery loads tasks/celery.py while importing)."""
    try:
        return get_settings()
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
