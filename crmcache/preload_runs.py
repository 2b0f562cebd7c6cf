"""Preloading many tenants: a run's progress and failures, and the bound on how many preloads
ask the Wrapper at once across every worker.

A run (``preload_all``: the beat, a resubscribe, ``crmcache preload --all --enqueue``) records
its total; each ``preload_tenant`` task of the run counts its outcome (done, retrying, failed
for good, with the reason) in ``crm:{preload}:run`` / ``crm:{preload}:failed``, so progress and
the tenants that failed can be read at any time, from anywhere. Before it asks the Wrapper, a
preload takes one of CRM_PRELOAD_CONCURRENCY slots (a Redis semaphore with leases, so a killed
worker's slot comes back): a fleet of any size sends the Wrapper at most that many snapshot
fetches at once.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from crmcache import keyspace
from crmcache.camel import camel_fields
from crmcache.errors import WrapperUnavailable
from crmcache.store import Store, now_ms, translate_errors


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    total: int
    done: int
    failed: int
    retried: int
    started_ms: int
    finished_ms: int | None
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.finished_ms is not None

    def as_dict(self) -> dict[str, Any]:
        return camel_fields(self)


def start_run(store: Store, tenants: Sequence[str]) -> str:
    """Begin a run of `tenants` (replacing the record of the previous run); its id."""
    run_id = uuid.uuid4().hex[:12]
    mapping: dict[str, str | int] = {
        "id": run_id,
        "total": len(tenants),
        "done": 0,
        "failed": 0,
        "retried": 0,
        "started-ms": now_ms(),
    }
    if not tenants:
        mapping["finished-ms"] = now_ms()
    store.start_preload_run(mapping)
    return run_id


def record(store: Store, run_id: str | None, tenant: str, outcome: str, reason: str = "") -> None:
    """Count `tenant`'s outcome ("done", "retry" or "failed") in run `run_id` (if any)."""
    if not run_id:
        return
    with translate_errors():
        store.script("preload_progress")(
            [keyspace.PRELOAD_RUN, keyspace.PRELOAD_FAILED],
            [run_id, tenant, outcome, reason[:500]],
        )


def progress(store: Store) -> RunProgress | None:
    """The latest run's progress and failures, or None when there never was one."""
    run, failures = store.preload_run()
    if "id" not in run:
        return None
    return RunProgress(
        run_id=run["id"],
        total=int(run.get("total", 0)),
        done=int(run.get("done", 0)),
        failed=int(run.get("failed", 0)),
        retried=int(run.get("retried", 0)),
        started_ms=int(run.get("started-ms", 0)),
        finished_ms=int(run["finished-ms"]) if "finished-ms" in run else None,
        failures=failures,
    )


class WrapperSlots:
    """At most `limit` holders across every process; a holder's lease ends after `lease_ms`."""

    def __init__(self, store: Store, limit: int, lease_ms: int) -> None:
        self.store = store
        self.limit = limit
        self.lease_ms = lease_ms

    def try_acquire(self, token: str) -> bool:
        with translate_errors():
            return bool(
                self.store.script("slot_acquire")(
                    [keyspace.PRELOAD_SLOTS], [token, self.limit, self.lease_ms]
                )
            )

    def release(self, token: str) -> None:
        self.store.release_preload_slot(token)

    def holders(self) -> int:
        return self.store.preload_slot_holders()

    @contextmanager
    def hold(self, wait_s: float) -> Iterator[None]:
        """Wait up to `wait_s` for a slot (WrapperUnavailable after that: retry later)."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        delay = 0.005
        while not self.try_acquire(token):
            if time.monotonic() >= deadline:
                raise WrapperUnavailable(
                    f"all {self.limit} Wrapper preload slots busy for {wait_s:.0f}s"
                )
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            self.release(token)
