"""Container health checks (docker-compose.yml): ``python -m ops.healthcheck CHECK``.

  redis                 the cache answers PING
  subscriber [MAX_AGE]  this container's subscriber: running, its loop went round in the
                        last MAX_AGE s (default 10, at least 3 x CRM_REDIS_SOCKET_TIMEOUT),
                        Redis answered it, active or standing by (CRM_SUBSCRIBER_STATUS_FILE
                        says where it keeps that; without it the check fails)
  worker                this host's Celery worker answers a ping
  beat PATH [MAX_AGE]   beat's schedule file was written in the last MAX_AGE s (default 600;
                        beat syncs it at least every 3 minutes while it ticks)
  http URL [any]        URL answers 200 (with "any": answers at all, e.g. 401)

Exit 0 healthy, 1 unhealthy (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import glob
import os
import socket
import sys
import time
import urllib.error
import urllib.request

TIMEOUT = 5.0


def check_redis() -> str | None:
    from config.settings import settings_or_exit
    from crmcache.errors import StoreUnavailable
    from crmcache.redis_client import make_redis
    from crmcache.store_base import translate_errors

    client = make_redis(settings_or_exit("healthcheck").cache_url, socket_timeout=TIMEOUT)
    try:
        with translate_errors():
            client.ping()
    except StoreUnavailable as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    return None


def check_subscriber(max_age: float | None = None) -> str | None:
    """This process's subscriber, from the status file it keeps (not the fleet's lease)."""
    from config.settings import settings_or_exit
    from consumer.ingest.liveness import check_status

    settings = settings_or_exit("healthcheck")
    if not settings.subscriber_status_file:
        return "CRM_SUBSCRIBER_STATUS_FILE is not set: the subscriber keeps no status to check"
    if max_age is None:
        max_age = max(10.0, 3 * settings.redis_socket_timeout)
    healthy, said = check_status(settings.subscriber_status_file, max_age)
    if healthy:
        print(said)
        return None
    return said


def check_worker() -> str | None:
    from celery import Celery

    from config.celery import celery_config
    from config.settings import settings_or_exit

    app = Celery("crmcache-healthcheck")
    app.conf.update(celery_config(settings_or_exit("healthcheck")))
    node = f"celery@{socket.gethostname()}"
    try:
        replies = app.control.ping(destination=[node], timeout=TIMEOUT) or []
    except Exception as exc:  # kombu's connection errors are many
        return f"broker: {exc}"
    finally:
        app.close()
    return None if replies else f"{node} did not answer a ping"


def check_beat(path: str, max_age: float = 600.0) -> str | None:
    files = glob.glob(path + "*")
    if not files:
        return f"no schedule file {path}"
    age = time.time() - max(os.path.getmtime(f) for f in files)
    return None if age <= max_age else f"schedule file not written for {age:.0f}s"


def check_http(url: str, any_status: bool = False) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 (our URL)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except OSError as exc:
        return f"{url}: {exc}"
    return None if status == 200 or any_status else f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    match argv:
        case ["redis"]:
            problem = check_redis()
        case ["subscriber"]:
            problem = check_subscriber()
        case ["subscriber", max_age]:
            problem = check_subscriber(float(max_age))
        case ["worker"]:
            problem = check_worker()
        case ["beat", path]:
            problem = check_beat(path)
        case ["beat", path, max_age]:
            problem = check_beat(path, float(max_age))
        case ["http", url]:
            problem = check_http(url)
        case ["http", url, "any"]:
            problem = check_http(url, any_status=True)
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
