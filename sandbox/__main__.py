"""``python -m sandbox``: run the development Wrapper sandbox until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from sandbox.errors import SandboxError
from sandbox.server import SandboxWrapper

DESCRIPTION = """\
Development tool, not for production: a stand-in for the Wrapper (the CRM's admin service).
It serves the Wrapper API (/api/...) from in-memory sample data and, given a Redis URL,
publishes a change event on crm:{tenant}:{stream} whenever you change that data through the
/_admin/... endpoints, e.g.
  curl -X PUT localhost:8081/_admin/acme/credit-configs/crm.leads.create -d '{"creditCost": 3}'
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8081, help="port (default %(default)s)")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="Redis to publish events on (default: $REDIS_URL; without one nothing is published)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("WRAPPER_API_TOKEN") or None,
        help="bearer token clients must send (default: $WRAPPER_API_TOKEN; none: no check)",
    )
    parser.add_argument(
        "--data", metavar="PATH", help="JSON data file (default: the bundled sample data)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def load_data(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        data: dict[str, Any] = json.load(file)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        data = load_data(args.data)
        sandbox = SandboxWrapper(
            data, redis_url=args.redis_url, token=args.token, host=args.host, port=args.port
        )
        sandbox.start()
    except (OSError, ValueError, SandboxError) as exc:
        print(f"sandbox: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    publishing = f"publishing on {args.redis_url}" if args.redis_url else "not publishing events"
    print(
        f"sandbox Wrapper on {sandbox.url} ({publishing}; tenants: "
        f"{', '.join(sandbox.state.tenant_ids())})",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
