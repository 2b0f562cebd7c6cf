"""Non-blocking answers for async endpoints: serve a critical read on the event loop only when
the reader can answer it from its near-cache (pure memory); anything that needs Redis or the
Wrapper runs in the thread pool instead.

Why (measured, see the README's benchmark section): on 2 cores a thread-pool hop per request
cost 3-4x in throughput against an ``async def`` answering from memory, because the event loop
and the pool threads fight over the GIL. The reader does not expose a near-cache-only call yet,
so ``peek_*`` uses ``peek_credit_cost`` / ``peek_permission`` when the reader has them and
otherwise checks the same condition the reader's own hit path checks (entry of the current
generation, near-cache confirmed within its staleness bound) before calling it. Between that
check and the call the trust can lapse (a window of microseconds); the call then makes its one
Redis round trip on the loop, bounded by CRM_READER_TIMEOUT_MS.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from consumer.http.readers import Readers, TenantReader


async def reader_for(readers: Readers, tenant: str) -> TenantReader:
    """The tenant's reader; its first creation (I/O) happens in the thread pool."""
    reader = readers.started().get(tenant)
    if reader is None:
        reader = await run_in_threadpool(readers.get, tenant)
    return reader


def _near(reader: Any) -> Any:
    critical = getattr(reader, "_critical", None)
    near = getattr(critical, "near", None)
    if near is None or not getattr(critical, "serve_near", False):
        return None
    if time.monotonic() >= near.trusted_until:
        return None
    return near


def peek_credit_cost(reader: Any, operation: str) -> Any | None:
    """The reader's answer when it is a near-cache hit, else None (without any I/O)."""
    peek = getattr(reader, "peek_credit_cost", None)
    if peek is not None:
        return peek(operation)
    near = _near(reader)
    entry = near.costs.get(operation) if near is not None else None
    if entry is None or entry[1] != near.gen:
        return None
    return reader.get_credit_cost(operation)


def peek_permission(reader: Any, user_id: str, permission: str) -> Any | None:
    peek = getattr(reader, "peek_permission", None)
    if peek is not None:
        return peek(user_id, permission)
    near = _near(reader)
    entry = near.users.get(user_id) if near is not None else None
    if entry is None or entry[1] != near.gen:
        return None
    if reader._critical._decide_cached(entry, permission, near.gen) is None:
        return None  # a role it needs is not cached: the reader would ask Redis
    return reader.check_permission(user_id, permission)


async def credit_cost(reader: TenantReader, operation: str) -> Any:
    answer = peek_credit_cost(reader, operation)
    if answer is None:
        answer = await run_in_threadpool(reader.get_credit_cost, operation)
    return answer


async def check_permission(reader: TenantReader, user_id: str, permission: str) -> Any:
    answer = peek_permission(reader, user_id, permission)
    if answer is None:
        answer = await run_in_threadpool(reader.check_permission, user_id, permission)
    return answer
