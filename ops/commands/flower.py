"""``crmcache flower``: Flower (Celery's monitor), never without authentication."""

from __future__ import annotations

import argparse
import os
from typing import Any

from config.settings import ConfigError, Settings

EPILOG = """\
FLOWER_BASIC_AUTH (user:password, comma-separated for several users) is required: Flower's
pages, its HTTP API and its Prometheus /metrics then all answer 401 without credentials
(give your scraper the same basic_auth). Open without credentials, holding no data:
/healthcheck, which says "OK" for container health checks, Flower's scripts and styles under
/static/, and its logged-out page /logout. Task arguments appear cut to a short preview
(config/amqp.py) so that user data does not spill into the dashboard.

exit codes: 0 stopped, 1 Flower failed, 2 FLOWER_BASIC_AUTH missing or malformed
"""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "flower",
        help="run Flower (Celery monitor) with basic authentication",
        description="Run Flower against the Celery broker, with basic authentication from "
        "FLOWER_BASIC_AUTH.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default="127.0.0.1", help="address (default %(default)s)")
    parser.add_argument("--port", type=int, default=5555, help="port (default %(default)s)")
    parser.set_defaults(handler=run)


def flower_argv(settings: Settings, address: str, port: int) -> list[str]:
    """celery's command line for Flower. Credentials stay in the environment, not in argv
    (which ``ps`` shows): Flower reads FLOWER_BASIC_AUTH itself."""
    if settings.flower_basic_auth is None:
        raise ConfigError(
            "FLOWER_BASIC_AUTH is not set (user:password): Flower never runs without authentication"
        )
    return [
        "-A",
        "tasks",
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--logging=none",  # log through crmcache's dictConfig, not tornado's
    ]


def require_login_for_metrics() -> None:
    """Put Flower's ``/metrics`` behind the login of every other page.

    Flower 2.x checks the login per handler (``tornado.web.authenticated`` on each ``get``),
    and its Metrics handler has none: it would tell anyone the task names, worker names and
    task rates. Wrapping that one method is the whole patch; ``/healthcheck`` stays open.
    """
    from flower.views.monitor import Metrics
    from tornado.web import authenticated

    if not hasattr(Metrics.get, "__wrapped__"):  # once, however often run() is called
        Metrics.get = authenticated(Metrics.get)


def run(args: argparse.Namespace, settings: Settings) -> int:
    argv = flower_argv(settings, args.address, args.port)
    # The API would otherwise be opened to anyone by this variable, whatever the basic auth.
    os.environ.pop("FLOWER_UNAUTHENTICATED_API", None)
    require_login_for_metrics()
    from celery.bin.celery import celery as celery_cli

    try:
        celery_cli.main(args=argv, prog_name="celery")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
