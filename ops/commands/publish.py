"""``crmcache publish``: send one event as the Wrapper would (for testing)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from config.settings import Settings
from crmcache.errors import InvalidEvent, InvalidTenant
from crmcache.event_validation import EventLimits
from crmcache.events import parse_message
from crmcache.keyspace import (
    META_EPOCH,
    META_UPSTREAM_SEQ_PREFIX,
    META_VERSION,
    STREAMS,
    TenantKeys,
)
from crmcache.tokens import version_token
from ops.commands._common import Exit, add_command, add_wait_option, cache_client, fail
from ops.commands._output import console, print_json

logger = logging.getLogger(__name__)

HELP = "validate and PUBLISH one event on crm:<tenant>:<stream>"
DESCRIPTION = "Publish one change event, as the Wrapper would."
EPILOG = """\
example:
  crmcache publish acme credit-configs '{"eventType": "credit-config-changed",
    "data": {"operationCode": "crm.leads.create", "newValue": 5}}'

  crmcache publish --wait 5 acme users '{"eventType": "user-changed", "seq": 42,
    "data": {"userId": "user-456", "status": "suspended"}}'

The event is checked against the contract first (exit 2 with the reason if invalid, nothing
sent). Exit 1 when no subscriber received it: pub/sub keeps nothing, so it is lost.

An event with a "seq" prints its consistency token, <stream>:<seq> (users:42): a read with
consistency at_least_as_fresh and that token answers only from data that includes the event.
With --wait, the command waits until the event is applied and prints the version token of the
data it left too (exit 1 when that takes longer than the given seconds)."""


def register(sub: Any) -> None:
    add_command(sub, "publish", run, HELP, DESCRIPTION, EPILOG, arguments=add_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant", help="tenant id")
    parser.add_argument("stream", choices=STREAMS, help="the event stream")
    parser.add_argument("event", help="the event as JSON; '-' reads it from stdin")
    add_wait_option(
        parser, "SECONDS", "wait up to SECONDS until the event is applied (needs the event's seq)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    payload = sys.stdin.read() if args.event == "-" else args.event
    try:
        channel = TenantKeys.of(args.tenant).channel(args.stream)
        event = parse_message(channel, payload.encode(), EventLimits.of(settings))
    except (InvalidEvent, InvalidTenant) as exc:
        reason = exc.reason if isinstance(exc, InvalidEvent) else str(exc)
        if args.json:
            print_json({"published": False, "error": reason})
        return fail(f"invalid event, not sent: {reason}", Exit.USAGE)
    if args.wait is not None and (event.upstream_seq is None or not 0 < args.wait <= 600):
        return fail("--wait needs an event with a seq and 0 < SECONDS <= 600", Exit.USAGE)
    with cache_client(settings) as client:
        receivers = int(client.publish(channel, payload.encode()))
        applied = _wait_applied(client, event, args.wait) if args.wait and receivers else None
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
        "token": f"{event.stream}:{event.upstream_seq}" if event.upstream_seq is not None else None,
    }
    if args.wait:
        result["appliedToken"] = applied
    if args.json:
        print_json(result)
    else:
        console().print(f"published {event.event_type} on {channel} to {receivers} receiver(s)")
        if result["token"]:
            console().print(f"token {result['token']}")
        if applied:
            console().print(f"applied: token {applied}")
    if receivers == 0:
        return fail("no subscriber is listening on the channel: the event is lost", Exit.FAILED)
    if args.wait and applied is None:
        return fail(f"the event was not applied within {args.wait:g} s", Exit.FAILED)
    return Exit.OK


def _wait_applied(client: Any, event: Any, timeout: float) -> str | None:
    """The version token once the tenant's meta shows the event's stream applied up to its
    seq (``upstream-seq:<stream>``, see crmcache/lua/apply_events.lua); None on timeout."""
    meta = TenantKeys.of(event.tenant).meta
    field = f"{META_UPSTREAM_SEQ_PREFIX}{event.stream}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seq, epoch, version = client.hmget(meta, field, META_EPOCH, META_VERSION)
        if seq is not None and int(seq) >= event.upstream_seq:
            return version_token(epoch, int(version or 0)) or None
        time.sleep(0.005)
    return None
