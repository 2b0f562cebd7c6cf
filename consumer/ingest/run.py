"""Running the subscriber as a process: ``python -m consumer`` or ``crmcache subscribe``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from config.settings import ConfigError, Settings, get_settings
from crmcache.logging_config import configure_logging

DESCRIPTION = (
    "Listen to crm:<tenant>:<stream> channels (every tenant, or CRM_TENANTS), validate, stamp "
    "and batch events into Celery apply_events tasks. Only one subscriber is active at a time; "
    "start more as standbys. SIGTERM/SIGINT flush and exit 0. With CRM_SUBSCRIBER_STATUS_FILE "
    "it keeps its own health there for `python -m ops.healthcheck subscriber`."
)


def run_subscriber(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the process exit code."""
    from consumer.ingest.subscriber import Subscriber
    from tasks.producer import CeleryEnqueuer

    enqueuer = CeleryEnqueuer(settings)
    subscriber = Subscriber(settings, enqueuer)
    if settings.subscriber_status_file:
        from consumer.ingest.liveness import StatusFile

        subscriber.on_beat = StatusFile(settings.subscriber_status_file, subscriber.token).beat
    subscriber.install_signal_handlers()
    try:
        return subscriber.run()
    finally:
        enqueuer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m consumer``: configuration errors are one line and exit code 2."""
    argparse.ArgumentParser(prog="python -m consumer", description=DESCRIPTION).parse_args(argv)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"crmcache: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return run_subscriber(settings)
