"""Which Redis a URL names: one server, a Redis Cluster, or a master found through Sentinels.

    redis://[user:password@]host:port[/db]                 one server (rediss:// for TLS)
    redis+cluster://[user:password@]host:port[,host:port...]   a Cluster; any nodes as seeds
    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]
                                                           the master of `service`, asked of
                                                           these Sentinels (the credentials
                                                           are the master's)

``rediss+cluster://`` and ``rediss+sentinel://`` use TLS. Pure parsing, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

Kind = Literal["single", "cluster", "sentinel"]
SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message says why."""


@dataclass(frozen=True)
class RedisTarget:
    kind: Kind
    url: str
    """The URL as given."""
    nodes: tuple[tuple[str, int], ...] = ()
    """Cluster seed nodes or Sentinels (empty for one server: use ``url``)."""
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def node_url(self, host: str, port: int) -> str:
        """A plain URL of one node (a Cluster node, or the master a Sentinel named)."""
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{port}/{self.db}"


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise RedisUrlError(f"unknown scheme {scheme!r} (use one of {', '.join(SCHEMES)})")
    kind, tls = SCHEMES[scheme]
    if kind == "single":
        return RedisTarget(kind, url, tls=tls)
    auth, _, location = rest.rpartition("@")
    username = password = None
    if auth:
        user, _, secret = auth.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    hosts, _, path = location.partition("/")
    nodes = tuple(_node(part) for part in hosts.split(",") if part.strip())
    if not nodes:
        raise RedisUrlError("no host:port given")
    segments = [s for s in path.split("/") if s]
    service = None
    if kind == "sentinel":
        if not segments:
            raise RedisUrlError("a Sentinel URL names the master: redis+sentinel://h:p/service")
        service = unquote(segments.pop(0))
    db = _db(segments)
    if kind == "cluster" and db != 0:
        raise RedisUrlError("a Redis Cluster has database 0 only")
    return RedisTarget(kind, url, nodes, service, db, username, password, tls)


def _node(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def _db(segments: list[str]) -> int:
    if not segments:
        return 0
    if len(segments) > 1 or not segments[0].isdigit():
        raise RedisUrlError(f"unexpected path {'/'.join(segments)!r}")
    return int(segments[0])


def kombu_broker(url: str) -> tuple[str, dict[str, str]]:
    """The kombu URL and extra transport options for a broker URL: ``redis+sentinel://``
    becomes kombu's ``sentinel://h:p;sentinel://h2:p2/db`` with ``master_name``; a Cluster
    cannot be a broker (kombu's Redis transport does not support it)."""
    scheme = url.partition("://")[0]
    if scheme not in SCHEMES:
        return url, {}  # amqp://, sentinel://, ... : kombu's own
    target = parse_redis_url(url)
    if target.kind == "single":
        return url, {}
    if target.kind == "cluster":
        raise RedisUrlError("Celery's Redis transport does not support Redis Cluster")
    auth = f":{quote(target.password, safe='')}@" if target.password else ""
    hosts = ";".join(f"sentinel://{auth}{host}:{port}" for host, port in target.nodes)
    assert target.service is not None
    return f"{hosts}/{target.db}", {"master_name": target.service}
