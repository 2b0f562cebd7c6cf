"""Settings: read from the environment once; a bad value fails at start, naming the variable."""

from __future__ import annotations

import pytest

from config.celery import celery_config
from config.settings import ConfigError, load_settings


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match="CRM_BATCH_SIZE"):
        load_settings()


def test_invalid_tenant_in_crm_tenants_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TENANTS", "acme,a:b")
    with pytest.raises(ConfigError, match="CRM_TENANTS.*a:b"):
        load_settings()


def test_crm_tenants_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TENANTS", " acme, globex ,")
    assert load_settings().tenants == ("acme", "globex")


def test_seed_redis_parts_build_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_USERNAME", "crm")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss:word")
    settings = load_settings()
    assert settings.cache_url == "redis://crm:p%40ss%3Aword@cache.internal:6380/0"
    assert settings.broker_url == settings.cache_url  # the broker defaults to the cache


def test_visibility_timeout_must_exceed_task_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TASK_TIME_LIMIT", "600")
    monkeypatch.setenv("CRM_VISIBILITY_TIMEOUT", "300")
    with pytest.raises(ConfigError, match="CRM_VISIBILITY_TIMEOUT"):
        load_settings()


def test_celery_is_json_only_with_late_acks_and_bounded_publishing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    conf = celery_config(load_settings())
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["result_backend"] is None
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"]
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_publish_retry_policy"]["max_retries"] <= 20
    assert conf["broker_url"].startswith("amqp://")
    queues = {q.name for q in conf["task_queues"]}
    assert {"crm.events", "crm.preload"} <= queues


def test_apply_soft_time_limit_must_be_below_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_APPLY_SOFT_TIME_LIMIT", "8")
    monkeypatch.setenv("CRM_APPLY_TIME_LIMIT", "8")
    with pytest.raises(ConfigError, match="CRM_APPLY_SOFT_TIME_LIMIT"):
        load_settings()


def test_apply_events_has_its_own_time_limits_and_is_requeued_past_the_hard_one() -> None:
    settings = load_settings(CRM_APPLY_SOFT_TIME_LIMIT=2, CRM_APPLY_TIME_LIMIT=3)
    annotation = celery_config(settings)["task_annotations"]["crmcache.apply_events"]
    assert annotation == {"soft_time_limit": 2, "time_limit": 3, "acks_on_timeout": False}
