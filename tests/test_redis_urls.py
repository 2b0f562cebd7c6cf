"""Which Redis a URL names, and the broker URL kombu is given for it (pure parsing)."""

from __future__ import annotations

import pytest

from config.celery import celery_config
from config.redis_urls import RedisUrlError, kombu_broker, parse_redis_url
from config.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "service", "db"),
    [
        ("redis://h:6379/2", "single", (), None, 0),
        ("redis+cluster://a:7000,b:7001", "cluster", (("a", 7000), ("b", 7001)), None, 0),
        ("rediss+cluster://u:p@a:7000/0", "cluster", (("a", 7000),), None, 0),
        (
            "redis+sentinel://s1:26379,s2:26380/crm",
            "sentinel",
            (("s1", 26379), ("s2", 26380)),
            "crm",
            0,
        ),
        ("redis+sentinel://:pw@s1:26379/crm/3", "sentinel", (("s1", 26379),), "crm", 3),
    ],
)
def test_a_url_names_one_server_a_cluster_or_a_sentinel_master(
    url: str, kind: str, nodes: tuple[tuple[str, int], ...], service: str | None, db: int
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.nodes, target.service, target.db) == (kind, nodes, service, db)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("memcached://h:1", "unknown scheme"),
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://h:7000/1", "database 0 only"),
        ("redis+cluster://h", "not host:port"),
        ("redis+sentinel://h:26379", "names the master"),
        ("redis+sentinel://h:26379/crm/x", "unexpected path"),
    ],
)
def test_an_unusable_url_says_why(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError, match=problem):
        parse_redis_url(url)


def test_credentials_reach_the_nodes() -> None:
    target = parse_redis_url("redis+sentinel://al%40ice:s%3Acret@s1:26379/crm/2")
    assert (target.username, target.password) == ("al@ice", "s:cret")
    assert target.node_url("10.0.0.5", 6380) == "redis://al%40ice:s%3Acret@10.0.0.5:6380/2"


def test_a_sentinel_broker_becomes_kombus_sentinel_url_with_its_master_name() -> None:
    url, extras = kombu_broker("redis+sentinel://:pw@s1:26379,s2:26380/crm/1")
    assert url == "sentinel://:pw@s1:26379;sentinel://:pw@s2:26380/1"
    assert extras == {"master_name": "crm"}
    assert kombu_broker("amqp://guest:guest@h:5672//") == ("amqp://guest:guest@h:5672//", {})


def test_a_sentinel_cache_is_the_default_broker_in_kombus_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    settings = load_settings(REDIS_URL="redis+sentinel://s1:26379/crm/0")
    conf = celery_config(settings)
    assert conf["broker_url"] == "sentinel://s1:26379/0"
    assert conf["broker_transport_options"]["master_name"] == "crm"


def test_a_bad_redis_url_fails_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_settings(REDIS_URL="redis+sentinel://s1:26379")
