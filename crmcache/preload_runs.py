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
        return {
            "runId": self.run_id,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "retried": self.retried,
            "startedMs": self.started_ms,
            "finishedMs": self.finished_ms,
            "failures": self.failures,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def start_run(store: Store, tenants: Sequence[str]) -> str:
    """Begin a run of `tenants` (replacing the record of the previous run); its id."""
    run_id = uuid.uuid4().hex[:12]
    with translate_errors():
        pipe = store.redis.pipeline(transaction=True)
        pipe.delete(keyspace.PRELOAD_RUN, keyspace.PRELOAD_FAILED)
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
        pipe.hset(keyspace.PRELOAD_RUN, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()
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
    with translate_errors():
        pipe = store.redis.pipeline(transaction=False)
        pipe.hgetall(keyspace.PRELOAD_RUN)
        pipe.hgetall(keyspace.PRELOAD_FAILED)
        run_raw, failed_raw = pipe.execute()
    run = {_text(k): _text(v) for k, v in run_raw.items()}
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
        failures={_text(k): _text(v) for k, v in failed_raw.items()},
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
        with translate_errors():
            self.store.redis.zrem(keyspace.PRELOAD_SLOTS, token)

    def holders(self) -> int:
        with translate_errors():
            self.store.redis.zremrangebyscore(keyspace.PRELOAD_SLOTS, "-inf", now_ms())
            return int(self.store.redis.zcard(keyspace.PRELOAD_SLOTS))

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
