"""``crmcache api``: serve the HTTP API (uvicorn)."""

from __future__ import annotations

import argparse
from typing import Any

from config.settings import Settings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "api",
        help="serve the HTTP API (the seed's endpoints, API keys, credits and leads)",
        description="Serve the HTTP API with uvicorn. API keys come from CRM_API_KEYS "
        "(tenant:key or tenant:sha256:<hex>, comma-separated). Defaults come from "
        "CRM_API_HOST, CRM_API_PORT and CRM_API_WORKERS.",
    )
    parser.add_argument("--host", help="address to bind (default: CRM_API_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (default: CRM_API_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes (default: CRM_API_WORKERS)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    workers = args.workers or settings.api_workers
    uvicorn.run(
        "consumer.api.app:create_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        workers=workers,
        log_config=None,  # keep crmcache's one logging configuration
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0
