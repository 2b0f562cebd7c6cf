"""Which pool processes the watchdog kills (tasks/pool_watchdog.py): the rules, table-driven.
The real thing, a SIGSTOPped process of a real worker, is in tests/test_hung_pool.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tasks.pool_watchdog import unstarted_overdue


@dataclass
class Proc:
    """What the rules read of a billiard process."""

    pid: int
    alive: bool = True

    def _is_alive(self) -> bool:
        return self.alive


@dataclass
class Job:
    """What the rules read of a billiard ApplyResult."""

    _job: int
    _write_to: Proc | None
    _accepted: bool = False
    _worker_pid: int | None = None
    _timeout: float | None = 8.0
    done: bool = False
    _scheduled_for: Proc | None = None
    correlation_id: str = "task"

    def ready(self) -> bool:
        return self.done


P1, P2 = Proc(101), Proc(102)


@pytest.mark.parametrize(
    ("jobs", "first_seen", "now", "killed"),
    [
        # a job written to an idle process, never started: killed once its hard limit passed
        ([Job(1, P1)], 0.0, 7.9, set()),
        ([Job(1, P1)], 0.0, 8.0, {101}),
        # started jobs are Celery's own time limits' business
        ([Job(1, P1, _accepted=True, _worker_pid=101)], 0.0, 60.0, set()),
        # a job queued behind one its process is running waits without blame
        ([Job(1, P1, _accepted=True, _worker_pid=101), Job(2, P1)], 0.0, 60.0, set()),
        # finished, not yet written anywhere, or written to a process already dead
        ([Job(1, P1, done=True)], 0.0, 60.0, set()),
        ([Job(1, None)], 0.0, 60.0, set()),
        ([Job(1, Proc(103, alive=False))], 0.0, 60.0, set()),
        # no hard limit at all: never
        ([Job(1, P1, _timeout=None)], 0.0, 600.0, set()),
        # only the process holding the overdue job
        ([Job(1, P1), Job(2, P2)], 0.0, 9.0, {101, 102}),
    ],
)
def test_unstarted_jobs_past_their_hard_limit_name_their_process(
    jobs: list[Job], first_seen: float, now: float, killed: set[int]
) -> None:
    waiting: dict[int, tuple[int, float]] = {}
    unstarted_overdue(list(jobs), None, waiting, first_seen)
    assert set(unstarted_overdue(list(jobs), None, waiting, now)) == killed


def test_the_clock_restarts_when_the_job_moves_to_another_process() -> None:
    # Given a job held by P1 for 7 s, then handed to P2 (P1 died, the pool re-sent it)
    waiting: dict[int, tuple[int, float]] = {}
    unstarted_overdue([Job(1, P1)], None, waiting, 0.0)
    unstarted_overdue([Job(1, P2)], None, waiting, 7.0)
    # Then P2 gets its own full limit
    assert unstarted_overdue([Job(1, P2)], None, waiting, 14.0) == {}
    assert set(unstarted_overdue([Job(1, P2)], None, waiting, 15.0)) == {102}


def test_the_pool_wide_limit_applies_to_a_task_without_its_own() -> None:
    waiting: dict[int, tuple[int, float]] = {}
    unstarted_overdue([Job(1, P1, _timeout=None)], 120.0, waiting, 0.0)
    assert set(unstarted_overdue([Job(1, P1, _timeout=None)], 120.0, waiting, 120.0)) == {101}
