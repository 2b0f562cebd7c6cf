"""Time limits for a prefork pool process that hangs before it reports a task started.

Celery starts a task's time-limit timers when the pool process acknowledges the job
(billiard's ``ApplyResult._ack``). A process stopped, deadlocked or blocked after the job was
written to it but before that acknowledgement is never timed: its task (under late acks, one
message unacknowledged at the broker) waits for the Redis transport's visibility timeout, an
hour by default. This worker bootstep closes the gap: once a process has held a job it never
started for longer than that task's hard time limit, and runs nothing else, it is killed. The
pool then hands the job to another process (``AsynPool.on_partial_read``) and starts a new one.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery import bootsteps
from celery.concurrency.asynpool import AsynPool

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
"""Seconds between two looks at the pool (a scan of its pending jobs, in the event loop)."""
REAP_DELAY = 0.1
"""Seconds after a kill until the pool is told to reap the process (SIGKILL takes effect)."""


def unstarted_overdue(
    jobs: list[Any], default_limit: float | None, waiting: dict[int, tuple[int, float]], now: float
) -> dict[int, tuple[Any, float]]:
    """The processes to kill: pid -> (job, seconds held) for every job written to a live
    process that is running nothing else, not acknowledged within its hard time limit.

    `waiting` maps job ids to (pid, since) between calls and is updated in place: a job's
    clock starts when it is first seen held by an idle process (a job queued behind a running
    one is not the process's fault)."""
    busy = {job._worker_pid for job in jobs if job._accepted and not job.ready()}
    seen: dict[int, tuple[int, float]] = {}
    overdue: dict[int, tuple[Any, float]] = {}
    for job in jobs:
        proc = job._write_to or job._scheduled_for
        if job._accepted or job.ready() or proc is None or not proc._is_alive():
            continue
        if proc.pid in busy:
            continue
        pid, since = waiting.get(job._job, (proc.pid, now))
        if pid != proc.pid:
            since = now
        seen[job._job] = (proc.pid, since)
        limit = job._timeout or default_limit
        if limit and now - since >= limit:
            overdue[proc.pid] = (job, now - since)
    waiting.clear()
    waiting.update(seen)
    return overdue


class PoolWatchdog(bootsteps.StartStopStep):
    """Worker bootstep: every second, kill prefork processes that hold a task they never
    started for longer than its hard time limit."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.waiting: dict[int, tuple[int, float]] = {}

    def register_with_event_loop(self, worker: Any, hub: Any) -> None:
        # Called each time the consumer (re)starts its event loop; Celery cancels the entries
        # of a failed connection, so there is one timer per loop.
        pool = getattr(worker.pool, "_pool", None)
        if isinstance(pool, AsynPool):
            hub.call_repeatedly(CHECK_INTERVAL, self.check, pool, hub)

    def check(self, pool: Any, hub: Any) -> None:
        """Kill the processes of ``pool`` (an AsynPool) that hold a job they never started."""
        overdue = unstarted_overdue(
            list(pool._cache.values()), pool.timeout, self.waiting, time.monotonic()
        )
        for pid, (job, held) in overdue.items():
            logger.error(
                "pool process %d did not start task %s within %.1fs of receiving it "
                "(hung?): killing it, the task goes to another process",
                pid,
                job.correlation_id,
                held,
            )
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if overdue:
            # The pool notices a dead process at its next maintenance (every 5 s): reap it now,
            # so that its job goes to another process at once.
            hub.call_later(REAP_DELAY, pool.maintain_pool)
