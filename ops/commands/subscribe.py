"""``crmcache subscribe``: run the subscriber (active, or standby while another leads)."""

from __future__ import annotations

import argparse
from typing import Any

from config.settings import Settings


def register(sub: Any) -> None:
    from consumer.ingest.run import DESCRIPTION

    parser: argparse.ArgumentParser = sub.add_parser(
        "subscribe",
        help="run the pub/sub subscriber (one active, others stand by)",
        description=DESCRIPTION,
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ingest.run import run_subscriber

    return run_subscriber(settings)
