"""What the operator commands share: exit codes, their options, one Redis client and its
errors. How they print is in ``_output``."""

from __future__ import annotations

import argparse
import enum
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from crmcache.errors import InvalidTenant, StoreUnavailable
from crmcache.redis_client import make_redis
from crmcache.store_base import translate_errors

if TYPE_CHECKING:
    import redis


class Exit(enum.IntEnum):
    """The exit codes of every ``crmcache`` command."""

    OK = 0
    FAILED = 1
    """The job failed, or Redis is unreachable."""
    USAGE = 2
    """Bad usage, input or configuration."""


EXIT_CODES = "exit codes: 0 success, 1 the job failed or Redis is unreachable, 2 bad usage or input"

Handler = Callable[[argparse.Namespace, Settings], int]


def add_command(
    sub: Any,
    name: str,
    handler: Handler,
    help: str,
    description: str,
    epilog: str = "",
    *,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    json: bool = True,
) -> argparse.ArgumentParser:
    """The operator command ``name``: its help with the exit codes after the epilog, its own
    ``arguments``, then ``--json`` (unless not ``json``), and ``handler`` run with Redis
    failures reported in one line (``with_redis_errors``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if arguments is not None:
        arguments(parser)
    if json:
        add_json_flag(parser)
    parser.set_defaults(handler=with_redis_errors(handler))
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON (for scripts) instead of tables"
    )


def add_wait_option(parser: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """``--wait SECONDS``: how long a command waits for the workers to have done its job."""
    parser.add_argument("--wait", type=float, metavar=metavar, help=help)


def fail(message: str, code: int = Exit.FAILED) -> int:
    print(f"crmcache: {message}", file=sys.stderr)
    return code


def cache_client(settings: Settings) -> redis.Redis:
    return make_redis(settings.cache_url, socket_timeout=settings.redis_socket_timeout)


def with_redis_errors(handler: Handler) -> Handler:
    """Exit 1 with one line (no traceback) when Redis cannot be reached; 2 for a bad tenant.
    The commands' own Redis calls have their errors translated here, at their boundary."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        try:
            with translate_errors():
                return handler(args, settings)
        except StoreUnavailable as exc:
            return fail(f"Redis at {_safe_url(settings.cache_url)} is unreachable: {exc}")
        except InvalidTenant as exc:
            return fail(str(exc), Exit.USAGE)

    return wrapped


def _safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
