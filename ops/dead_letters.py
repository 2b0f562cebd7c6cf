"""The dead-letter stream for operators: list, show, replay and purge (``crmcache dlq``).

Entries are written by ``Store.dead_letter`` (fields reason, channel, tenant, size, raw, at-ms).
A replay validates the raw message against the event contract as it stands now, PUBLISHes it on
its channel, and deletes the entry only once a subscriber received it: pub/sub keeps nothing, so
an entry published to nobody is kept.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crmcache import keyspace
from crmcache.errors import InvalidEvent
from crmcache.event_validation import EventLimits
from crmcache.events import parse_message
from crmcache.store_base import text, translate_errors

if TYPE_CHECKING:
    import redis

ENTRY_ID = re.compile(r"^\d+-\d+$")


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str
    channel: str
    tenant: str
    size: int
    raw: bytes
    at_ms: int

    @classmethod
    def from_stream(cls, entry_id: Any, fields: Mapping[Any, Any] | None) -> DeadLetter:
        fields = fields or {}

        def field(name: str) -> bytes:
            value = fields.get(name.encode(), fields.get(name, b""))
            return value if isinstance(value, bytes) else str(value).encode()

        def number(name: str) -> int:
            try:
                return int(field(name) or 0)
            except ValueError:
                return 0

        return cls(
            id=text(entry_id),
            reason=text(field("reason"), "replace"),
            channel=text(field("channel"), "replace"),
            tenant=text(field("tenant"), "replace"),
            size=number("size"),
            raw=field("raw"),
            at_ms=number("at-ms"),
        )

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "atMs": self.at_ms,
            "tenant": self.tenant or None,
            "channel": self.channel or None,
            "reason": self.reason,
            "size": self.size,
        }

    def as_dict(self) -> dict[str, Any]:
        """Everything, with the raw message as text (and base64 when it is not UTF-8)."""
        body = self.summary()
        try:
            body["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            body["raw"] = self.raw.decode("utf-8", "replace")
            body["rawBase64"] = base64.b64encode(self.raw).decode()
        body["truncated"] = self.truncated
        return body


@dataclass(frozen=True)
class ReplayResult:
    id: str
    outcome: str
    """replayed | invalid | no-channel | truncated | no-subscriber | missing"""
    detail: str = ""
    receivers: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "replayed"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_entry_id(value: str) -> bool:
    return bool(ENTRY_ID.match(value))


@translate_errors()
def list_entries(
    client: redis.Redis, limit: int, tenant: str | None = None, oldest_first: bool = False
) -> list[DeadLetter]:
    """Up to `limit` entries, newest first (or oldest first), optionally of one tenant."""
    found: list[DeadLetter] = []
    cursor = "-" if oldest_first else "+"
    while len(found) < limit:
        if oldest_first:
            page = client.xrange(keyspace.DEAD_LETTERS, min=cursor, count=500)
        else:
            page = client.xrevrange(keyspace.DEAD_LETTERS, max=cursor, count=500)
        if not page:
            break
        for entry_id, fields in page:
            entry = DeadLetter.from_stream(entry_id, fields)
            if tenant is None or entry.tenant == tenant:
                found.append(entry)
        cursor = "(" + entry.id  # exclusive: the next page starts after the last entry read
    return found[:limit]


@translate_errors()
def get_entry(client: redis.Redis, entry_id: str) -> DeadLetter | None:
    page = client.xrange(keyspace.DEAD_LETTERS, min=entry_id, max=entry_id, count=1)
    if not page:
        return None
    found_id, fields = page[0]
    return DeadLetter.from_stream(found_id, fields)


@translate_errors()
def replay(client: redis.Redis, entry: DeadLetter, limits: EventLimits) -> ReplayResult:
    """Validate, PUBLISH on the entry's channel, then delete the entry if someone received it."""
    if not entry.channel:
        return ReplayResult(entry.id, "no-channel", "rejected inside a task: no channel to replay")
    if entry.truncated:
        return ReplayResult(entry.id, "truncated", f"only {len(entry.raw)} of {entry.size} bytes")
    try:
        parse_message(entry.channel, entry.raw, limits)
    except InvalidEvent as exc:
        return ReplayResult(entry.id, "invalid", exc.reason)
    receivers = int(client.publish(entry.channel, entry.raw))
    if receivers == 0:
        return ReplayResult(entry.id, "no-subscriber", "nobody listens on the channel; kept")
    client.xdel(keyspace.DEAD_LETTERS, entry.id)
    return ReplayResult(entry.id, "replayed", entry.channel, receivers)


@translate_errors()
def purge(client: redis.Redis) -> int:
    """Delete every stored entry; returns how many there were. The total count is kept."""
    pipe = client.pipeline(transaction=True)
    pipe.xlen(keyspace.DEAD_LETTERS)
    pipe.delete(keyspace.DEAD_LETTERS)
    count, _ = pipe.execute()
    return int(count)
