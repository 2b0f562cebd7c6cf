"""``crmcache publish``: send one event as the Wrapper would (for testing)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from config.settings import Settings
from crmcache.errors import InvalidEvent, InvalidTenant
from crmcache.event_validation import EventLimits
from crmcache.events import parse_message
from crmcache.keyspace import STREAMS, TenantKeys
from ops.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_json_flag,
    add_parser,
    cache_client,
    console,
    fail,
    print_json,
    with_redis_errors,
)

logger = logging.getLogger(__name__)

EPILOG = """\
example:
  crmcache publish acme credit-configs '{"eventType": "credit-config-changed",
    "data": {"operationCode": "crm.leads.create", "newValue": 5}}'

The event is checked against the contract first (exit 2 with the reason if invalid, nothing
sent). Exit 1 when no subscriber received it: pub/sub keeps nothing, so it is lost."""


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "publish",
        help="validate and PUBLISH one event on crm:<tenant>:<stream>",
        description="Publish one change event, as the Wrapper would.",
        epilog=EPILOG,
    )
    parser.add_argument("tenant", help="tenant id")
    parser.add_argument("stream", choices=STREAMS, help="the event stream")
    parser.add_argument("event", help="the event as JSON; '-' reads it from stdin")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


@with_redis_errors
def run(args: argparse.Namespace, settings: Settings) -> int:
    payload = sys.stdin.read() if args.event == "-" else args.event
    try:
        channel = TenantKeys.of(args.tenant).channel(args.stream)
        event = parse_message(channel, payload.encode(), EventLimits.of(settings))
    except (InvalidEvent, InvalidTenant) as exc:
        reason = exc.reason if isinstance(exc, InvalidEvent) else str(exc)
        if args.json:
            print_json({"published": False, "error": reason})
        return fail(f"invalid event, not sent: {reason}", EXIT_USAGE)
    client = cache_client(settings)
    try:
        receivers = int(client.publish(channel, payload.encode()))
    finally:
        client.close()
    extra = {"tenant": event.tenant, "event_id": event.event_id or "-"}
    logger.info(
        "published %s on %s to %d receivers", event.event_type, channel, receivers, extra=extra
    )
    result = {
        "published": True,
        "channel": channel,
        "eventType": event.event_type,
        "eventId": event.event_id,
        "receivers": receivers,
    }
    if args.json:
        print_json(result)
    else:
        console().print(f"published {event.event_type} on {channel} to {receivers} receiver(s)")
    if receivers == 0:
        return fail("no subscriber is listening on the channel: the event is lost", EXIT_FAILED)
    return EXIT_OK
