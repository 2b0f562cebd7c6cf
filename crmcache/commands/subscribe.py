"""``crmcache subscribe``: run the subscriber (active, or standby while another leads)."""

from __future__ import annotations

import argparse
from typing import Any

from config.settings import Settings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "subscribe",
        help="run the pub/sub subscriber (one active, others stand by)",
        description="Listen to crm:<tenant>:<stream> channels (every tenant, or CRM_TENANTS), "
        "validate, stamp and batch events into Celery apply_events tasks. Only one subscriber "
        "is active at a time; start more as standbys. SIGTERM/SIGINT flush and exit 0. With "
        "CRM_SUBSCRIBER_STATUS_FILE it keeps its own health there for "
        "`python -m crmcache.healthcheck subscriber`.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.enqueue import CeleryEnqueuer
    from consumer.subscriber import Subscriber

    enqueuer = CeleryEnqueuer(settings)
    subscriber = Subscriber(settings, enqueuer)
    if settings.subscriber_status_file:
        from crmcache.liveness import StatusFile

        subscriber.on_beat = StatusFile(settings.subscriber_status_file, subscriber.token).beat
    subscriber.install_signal_handlers()
    try:
        return subscriber.run()
    finally:
        enqueuer.close()
