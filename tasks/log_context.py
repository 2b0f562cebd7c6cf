"""Bind each task's tenant, event ids and task id to its log lines (see logging_config)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from crmcache.logging_config import bind_log_context

MAX_EVENT_IDS = 20


@cache
def _takes_tenant_first(task_name: str, run: Any) -> bool:
    try:
        params = list(inspect.signature(run).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "tenant"


def event_ids(events: object) -> str:
    """`apply_events`' batch as ids: the eventId when the Wrapper sent one, else ``#<stamp>``."""
    if not isinstance(events, list):
        return ""
    ids = [
        str(e.get("id") or f"#{e.get('s')}") if isinstance(e, Mapping) else "?"
        for e in events[:MAX_EVENT_IDS]
    ]
    more = len(events) - MAX_EVENT_IDS
    return ",".join(ids) + (f",+{more} more" if more > 0 else "")


def task_log_fields(
    task_name: str, run: Any, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> dict[str, str]:
    """The log context of one task run: task id is added by the caller."""
    args, kwargs = args or (), kwargs or {}
    fields: dict[str, str] = {}
    tenant = kwargs.get("tenant")
    if tenant is None and args and _takes_tenant_first(task_name, run):
        tenant = args[0]
    if isinstance(tenant, str):
        fields["tenant"] = tenant
    events = kwargs.get("events", args[1] if len(args) > 1 else None)
    if task_name == "crmcache.apply_events":
        fields["event_ids"] = event_ids(events)
    return fields


def bind_task(
    task_id: str | None = None,
    task: Any = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **_: object,
) -> None:
    """task_prerun receiver."""
    name = str(getattr(task, "name", ""))
    fields = task_log_fields(name, getattr(task, "run", None), args, kwargs)
    bind_log_context(task_id=task_id or "", **fields)


def unbind_task(**_: object) -> None:
    """task_postrun receiver."""
    bind_log_context()
