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
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode, SettingsConfigDict

from config.settings_api import ApiSettings
from config.settings_env import env
from config.settings_read import ReadSettings
from config.tenancy import is_valid_tenant

PLACEHOLDER_SECRET = "change-me"
"""What .env.example's secrets say until someone sets real ones."""


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names the variable."""


class Settings(ReadSettings, ApiSettings):
    """All of crmcache's configuration. Field aliases are the environment variable names; the
    read side's fields live in config/settings_read.py, the API's and credits' in
    config/settings_api.py."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", populate_by_name=True, frozen=True
    )

    # --- Redis (the cache) and the Celery broker -----------------------------------------
    redis_url: str | None = Field(default=None, validation_alias=env("REDIS_URL"))
    redis_host: str = Field(default="127.0.0.1", validation_alias=env("REDIS_HOST"))
    redis_port: int = Field(default=6379, ge=1, le=65535, validation_alias=env("REDIS_PORT"))
    redis_username: str | None = Field(default=None, validation_alias=env("REDIS_USERNAME"))
    redis_password: SecretStr | None = Field(default=None, validation_alias=env("REDIS_PASSWORD"))
    redis_socket_timeout: float = Field(
        default=5.0, gt=0, le=60, validation_alias=env("CRM_REDIS_SOCKET_TIMEOUT")
    )
    redis_cluster: bool = Field(default=False, validation_alias=env("CRM_REDIS_CLUSTER"))
    """REDIS_URL (or REDIS_HOST/PORT) names a node of a Redis Cluster: the same as giving
    REDIS_URL as redis+cluster://host:port (see config/redis_urls.py)."""
    celery_broker_url: str | None = Field(default=None, validation_alias=env("CELERY_BROKER_URL"))

    # --- The Wrapper (upstream source of truth) ------------------------------------------
    wrapper_api_url: str = Field(
        default="http://127.0.0.1:8081", validation_alias=env("WRAPPER_API_URL")
    )
    wrapper_api_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=env("WRAPPER_API_TOKEN")
    )
    wrapper_connect_timeout: float = Field(
        default=2.0, gt=0, le=60, validation_alias=env("CRM_WRAPPER_CONNECT_TIMEOUT")
    )
    wrapper_read_timeout: float = Field(
        default=5.0, gt=0, le=300, validation_alias=env("CRM_WRAPPER_READ_TIMEOUT")
    )
    wrapper_retries: int = Field(
        default=3, ge=0, le=10, validation_alias=env("CRM_WRAPPER_RETRIES")
    )
    wrapper_breaker_failures: int = Field(
        default=5, ge=1, le=1000, validation_alias=env("CRM_WRAPPER_BREAKER_FAILURES")
    )
    wrapper_breaker_reset: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=env("CRM_WRAPPER_BREAKER_RESET")
    )
    tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias=env("CRM_TENANTS")
    )

    # --- Event pipeline -----------------------------------------------------------------
    batch_size: int = Field(default=100, ge=1, le=10_000, validation_alias=env("CRM_BATCH_SIZE"))
    flush_interval_ms: float = Field(
        default=5.0, gt=0, le=10_000, validation_alias=env("CRM_FLUSH_INTERVAL_MS")
    )
    event_lanes: bool = Field(default=True, validation_alias=env("CRM_EVENT_LANES"))
    """Send flooding tenants' batches to the bulk lane (crm.events.bulk); see
    consumer/ingest/lanes.py."""
    urgent_lane: bool = Field(default=True, validation_alias=env("CRM_URGENT_LANE"))
    """Send events that may revoke access at once, in batches of their own, to the urgent lane
    (crm.events.urgent); see consumer/ingest/lanes.py."""
    revoke_fast_path: bool = Field(default=False, validation_alias=env("CRM_REVOKE_FAST_PATH"))
    """Opt-in: the subscriber applies a few revoking events itself before sending their task
    (which stays the durable path); see consumer/ingest/fast_path.py. Off by default: the
    subscriber stays a thin one that never writes the cache nor PUBLISHes (its Redis ACL)."""
    bulk_threshold: int = Field(
        default=200, ge=1, le=1_000_000, validation_alias=env("CRM_BULK_THRESHOLD")
    )
    """Events a tenant may send within about a second before its batches take the bulk lane."""
    bulk_batch_size: int = Field(
        default=200, ge=1, le=10_000, validation_alias=env("CRM_BULK_BATCH_SIZE")
    )
    """Events per apply_events task in the bulk lane (fewer, larger tasks drain a flood faster)."""
    bulk_flush_interval_ms: float = Field(
        default=50.0, gt=0, le=10_000, validation_alias=env("CRM_BULK_FLUSH_INTERVAL_MS")
    )
    """How long a bulk tenant's partial batch may wait to grow (its events only)."""
    bulk_max_rate: int = Field(
        default=2500, ge=0, le=10_000_000, validation_alias=env("CRM_BULK_MAX_RATE")
    )
    """Events a second the subscriber reads from a pub/sub connection whose tenants are all bulk,
    when it has several connections (0: unlimited). The rest of a flood waits in Redis (the
    subscriber's output buffer, `client-output-buffer-limit pubsub`), so that it cannot take
    the CPU and the workers from other tenants."""
    subscriber_shards: int = Field(
        default=16, ge=1, le=1024, validation_alias=env("CRM_SUBSCRIBER_SHARDS")
    )
    """Pub/sub connections the active subscriber spreads listed tenants (CRM_TENANTS) over, so
    that one tenant's flood cannot queue in front of another's messages; with at least as many
    connections as tenants each has its own (consumer/ingest/pubsub_shards.py)."""
    preload_interval: float = Field(
        default=300.0, ge=5, le=86_400, validation_alias=env("CRM_PRELOAD_INTERVAL")
    )
    preload_concurrency: int = Field(
        default=8, ge=1, le=1000, validation_alias=env("CRM_PRELOAD_CONCURRENCY")
    )
    """Preloads that may ask the Wrapper at once, across every worker (crmcache/preload_runs.py)."""
    preload_slot_wait: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=env("CRM_PRELOAD_SLOT_WAIT")
    )
    """Seconds a preload waits for a free slot before it is retried later."""
    preload_page_size: int = Field(
        default=1000, ge=1, le=10_000, validation_alias=env("CRM_PRELOAD_PAGE_SIZE")
    )
    dedupe_window: int = Field(
        default=86_400, ge=60, le=30 * 86_400, validation_alias=env("CRM_DEDUPE_WINDOW")
    )
    tombstone_retention: int = Field(
        default=7 * 86_400,
        ge=60,
        le=365 * 86_400,
        validation_alias=env("CRM_TOMBSTONE_RETENTION"),
    )
    """Seconds a resync keeps a deleted entity's version at least (up to about twice that), so
    that a late older event or replay of it stays refused (crmcache/lua/snapshot_commit.lua)."""
    dead_letter_maxlen: int = Field(
        default=100_000, ge=100, validation_alias=env("CRM_DEAD_LETTER_MAXLEN")
    )
    max_event_bytes: int = Field(
        default=64 * 1024, ge=1024, le=1024 * 1024, validation_alias=env("CRM_MAX_EVENT_BYTES")
    )
    max_event_depth: int = Field(
        default=32, ge=2, le=500, validation_alias=env("CRM_MAX_EVENT_DEPTH")
    )
    """How deep a message may nest arrays and objects (the envelope is level 1): a deeper one is
    dead-lettered before it is decoded (Python's decoder recurses once per level)."""
    max_credit_value: int = Field(
        default=10**12, ge=1, le=2**53, validation_alias=env("CRM_MAX_CREDIT_VALUE")
    )
    """The largest cost, top-up delta or balance an event may carry (either side of 0)."""

    # --- Subscriber liveness and leadership ------------------------------------------------
    health_check_interval: float = Field(
        default=2.0, gt=0, le=60, validation_alias=env("CRM_HEALTH_CHECK_INTERVAL")
    )
    leader_lease: float = Field(default=3.0, ge=1, le=60, validation_alias=env("CRM_LEADER_LEASE"))
    reconnect_max_delay: float = Field(
        default=5.0, gt=0, le=300, validation_alias=env("CRM_RECONNECT_MAX_DELAY")
    )
    subscriber_status_file: str | None = Field(
        default=None, validation_alias=env("CRM_SUBSCRIBER_STATUS_FILE")
    )
    """Where the subscriber keeps its own health (role, last loop turn) for its container
    healthcheck, ``python -m ops.healthcheck subscriber`` (consumer/ingest/liveness.py)."""

    # --- Celery ---------------------------------------------------------------------------
    task_time_limit: int = Field(default=120, ge=5, validation_alias=env("CRM_TASK_TIME_LIMIT"))
    visibility_timeout: int = Field(
        default=3600, ge=10, validation_alias=env("CRM_VISIBILITY_TIMEOUT")
    )
    publish_max_retries: int = Field(
        default=3, ge=0, le=20, validation_alias=env("CRM_PUBLISH_MAX_RETRIES")
    )
    apply_soft_time_limit: float = Field(
        default=6.0, gt=0, le=3600, validation_alias=env("CRM_APPLY_SOFT_TIME_LIMIT")
    )
    """Seconds: an apply_events task still running is interrupted and retried. A batch takes
    milliseconds; keep this above CRM_REDIS_SOCKET_TIMEOUT so that a stalled Redis call fails
    (and is retried) first."""
    apply_time_limit: float = Field(
        default=8.0, gt=0, le=3600, validation_alias=env("CRM_APPLY_TIME_LIMIT")
    )
    """Seconds: the pool process of an apply_events task that has not finished, or not even
    started, is killed and the batch goes to another process (tasks/pool_watchdog.py)."""
    inflight_timeout: float = Field(
        default=5.0, ge=0, le=30, validation_alias=env("CRM_INFLIGHT_TIMEOUT")
    )
    """Seconds a batch the subscriber sent may stay unapplied before it sends it again
    (consumer/ingest/inflight.py); 0: never re-send."""
    inflight_max_resends: int = Field(
        default=3, ge=0, le=100, validation_alias=env("CRM_INFLIGHT_MAX_RESENDS")
    )
    """Re-sends of one batch before the subscriber gives up on it and resyncs its tenant."""

    # --- Logging ----------------------------------------------------------------------------
    log_level: str = Field(default="INFO", validation_alias=env("CRM_LOG_LEVEL"))
    log_format: str = Field(
        default="text", pattern="^(text|json)$", validation_alias=env("CRM_LOG_FORMAT")
    )

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
