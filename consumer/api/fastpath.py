"""Non-blocking answers for the async endpoints: a critical read is answered on the event loop
only when the tenant's reader holds it in its near-cache (``peek_*``: pure memory); anything
that needs Redis or the Wrapper runs in the thread pool, except the balance, which is one
async Redis call.

Why (measured, see docs/http-api.md): on 2 cores a thread-pool hop per request cost 3-4x in
throughput against an ``async def`` answering from memory, because the event loop and the pool
threads fight over the GIL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from consumer.api.readers import Readers, TenantReader
from consumer.read.consistency import DEFAULT, Consistency, MinimizeLatency
from consumer.read.results import CreditCost, Number, PermissionCheck
from crmcache import credits
from crmcache.errors import StoreUnavailable

if TYPE_CHECKING:
    from consumer.api.service import ApiService


async def reader_for(readers: Readers, tenant: str) -> TenantReader:
    """The tenant's reader; its first creation (I/O) happens in the thread pool."""
    reader = readers.peek(tenant)
    if reader is None:
        reader = await run_in_threadpool(readers.get, tenant)
    return reader


async def credit_cost(
    reader: TenantReader, operation: str, level: Consistency = DEFAULT
) -> CreditCost:
    """The near-cache's answer under ``minimize_latency``; else the reader's read at
    ``level`` (which may wait, for ``at_least_as_fresh``) in the thread pool."""
    if isinstance(level, MinimizeLatency):
        answer = reader.peek_credit_cost_detail(operation)
        if answer is not None:
            return answer
    return await run_in_threadpool(reader.get_credit_cost_detail, operation, level)


async def check_permission(
    reader: TenantReader, user_id: str, permission: str, level: Consistency = DEFAULT
) -> PermissionCheck:
    """As ``credit_cost``."""
    if isinstance(level, MinimizeLatency):
        answer = reader.peek_permission_detail(user_id, permission)
        if answer is not None:
            return answer
    return await run_in_threadpool(reader.check_permission_detail, user_id, permission, level)


async def balance(
    service: ApiService, reader: TenantReader, tenant: str, user_id: str, strong: bool = False
) -> tuple[Number | None, bool, bool, bool]:
    """(available, found, cached, stale): the near-cache's balance; else one async Redis call
    (whose answer the near-cache keeps when it was read at the version it knows); a balance
    not cached, or Redis failing, goes through the reader's read-through in the thread pool.

    ``strong`` (the request asked for a strong level, and its cost read already got Redis to
    the token: every Redis read after it is at least as fresh): never the near-cache, and
    never a stale answer (``StoreUnavailable`` instead)."""
    held = None if strong else reader.peek_user_credits(user_id)
    if held is not None:
        return held, True, True, False
    read = await service.cached_balance(tenant, user_id)
    if read is not None:
        raw, version, epoch = read
        value = credits.as_number(raw)
        if epoch is not None:
            reader.keep_user_credits(user_id, value, version, epoch)
        return value, True, True, False
    answer = await run_in_threadpool(reader.get_user_credits_detail, user_id)
    if strong and answer.stale:
        raise StoreUnavailable("a strong consistency level is never answered from a stale balance")
    found = answer.found and answer.value is not None
    return answer.value, found, answer.cached, answer.stale
