"""What the operator commands share: exit codes, JSON or rich output, one Redis client."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from config.settings import Settings
from crmcache.errors import InvalidTenant, StoreUnavailable
from crmcache.redis_client import make_redis
from crmcache.store_base import now_ms, translate_errors

if TYPE_CHECKING:
    import redis

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EXIT_CODES = "exit codes: 0 success, 1 the job failed or Redis is unreachable, 2 bad usage or input"

Handler = Callable[[argparse.Namespace, Settings], int]


def add_parser(sub: Any, name: str, help: str, description: str, epilog: str = "") -> Any:
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON (for scripts) instead of tables"
    )


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), flush=True)


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def fail(message: str, code: int = EXIT_FAILED) -> int:
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
            return fail(str(exc), EXIT_USAGE)

    return wrapped


def _safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def age(ms: int | float | None, now: int | None = None) -> str:
    """'4.2s ago', '3m ago', ...; '-' when never."""
    if ms is None:
        return "-"
    seconds = max(((now or now_ms()) - float(ms)) / 1000, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86_400:.1f}d ago"
