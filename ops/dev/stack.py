"""A small process supervisor: start parts, prefix their output, notice deaths, stop them all.

Each part runs in its own session (its own process group) so that a terminal's Ctrl-C reaches
only the supervisor, which then stops the parts in stages: SIGTERM to each part's main process
(Celery finishes its running tasks and stops its pool), SIGTERM to whatever is left of its
process group, SIGKILL to the group after the grace period. On Linux each main process also
gets SIGTERM should the supervisor itself die (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


class PartFailed(RuntimeError):
    """A part exited, or did not become ready in time."""

    def __init__(self, part: Part, message: str) -> None:
        super().__init__(message)
        self.part = part


class Interrupted(RuntimeError):
    """A stop was requested (signal) while waiting."""


@dataclass
class Part:
    """One supervised process: `argv`, where it listens, and how to tell that it is ready."""

    name: str
    argv: Sequence[str]
    url: str = ""
    note: str = ""
    ready: Callable[[], bool] | None = None
    stop_stage: int = 0
    """Parts stop in stages, lowest first: what others depend on (the broker's consumers, the
    Wrapper) stops after what depends on it."""
    process: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies do not count, on Linux)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class Supervisor:
    """Starts parts with one environment and working directory; stops them all."""

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: str,
        out: IO[str] | None = None,
        grace: float = 6.0,
        poll: float = 0.1,
    ) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.out = out if out is not None else sys.stderr
        self.grace = grace
        self.poll = poll
        self.parts: list[Part] = []
        self.stop_requested = threading.Event()
        self.hurry = threading.Event()
        self._write_lock = threading.Lock()

    # --- starting ----------------------------------------------------------------------------

    def start(self, part: Part) -> Part:
        part.process = subprocess.Popen(
            list(part.argv),
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        part.reader = threading.Thread(
            target=self._forward, args=(part,), name=f"output-{part.name}", daemon=True
        )
        part.reader.start()
        self.parts.append(part)
        return part

    def _forward(self, part: Part) -> None:
        """Copy a part's output to `out`, each line prefixed with the part's name."""
        assert part.process is not None and part.process.stdout is not None
        with part.process.stdout as stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                part.tail.append(line)
                self.write(f"{part.name:>10} | {line}")

    def write(self, line: str) -> None:
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            self.out.write(line + "\n")
            self.out.flush()

    def wait_ready(self, parts: Sequence[Part], timeout: float) -> None:
        """Block until every part's probe says ready; PartFailed on death or timeout."""
        pending = [p for p in parts if p.ready is not None]
        deadline = time.monotonic() + timeout
        while pending:
            if self.stop_requested.is_set():
                raise Interrupted("stop requested")
            self.check_alive()
            pending = [p for p in pending if not _probe(p)]
            if pending and time.monotonic() > deadline:
                raise PartFailed(pending[0], f"{pending[0].name} not ready after {timeout:.0f}s")
            if pending:
                self.stop_requested.wait(self.poll)

    def check_alive(self) -> None:
        for part in self.parts:
            code = part.exit_code()
            if code is not None:
                raise PartFailed(part, f"{part.name} exited unexpectedly with code {code}")

    def watch(self) -> Part | None:
        """Run until a stop is requested (returns None) or a part exits (returns it)."""
        while not self.stop_requested.wait(self.poll * 2):
            try:
                self.check_alive()
            except PartFailed as exc:
                return exc.part
        return None

    # --- stopping ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Called from a signal handler: first call stops gracefully, a second hurries."""
        if self.stop_requested.is_set():
            self.hurry.set()
        self.stop_requested.set()

    def stop(self) -> list[str]:
        """Stop every part, stage by stage; returns the names of parts that needed SIGKILL."""
        killed: list[str] = []
        for stage in sorted({p.stop_stage for p in self.parts}):
            running = [p for p in self.parts if p.process is not None and p.stop_stage == stage]
            killed += self._stop_parts(running)
        return killed

    def _stop_parts(self, running: list[Part]) -> list[str]:
        for part in running:
            if part.exit_code() is None:
                _signal_pid(part, signal.SIGTERM)
        self._wait_gone(running)
        killed = [p.name for p in running if p.exit_code() is None or _group_alive(p)]
        for part in running:
            if part.name in killed:
                _signal_group(part, signal.SIGKILL)
            assert part.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                part.process.wait(timeout=5)
            if part.reader is not None:
                part.reader.join(timeout=2)
        deadline = time.monotonic() + 3
        while any(_group_alive(p) for p in running) and time.monotonic() < deadline:
            time.sleep(self.poll / 4)  # SIGKILLed processes take a moment to be gone
        return killed

    def _wait_gone(self, running: list[Part]) -> None:
        """Wait up to the grace period for every part's process group to be gone; SIGTERM the
        group once its main process has exited (what it left behind)."""
        termed: set[str] = set()
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and not self.hurry.is_set():
            alive = [p for p in running if p.exit_code() is None or _group_alive(p)]
            if not alive:
                return
            for part in alive:
                if part.exit_code() is not None and part.name not in termed:
                    _signal_group(part, signal.SIGTERM)
                    termed.add(part.name)
            time.sleep(self.poll)


def _probe(part: Part) -> bool:
    assert part.ready is not None
    try:
        return bool(part.ready())
    except Exception:  # a probe that cannot connect yet just says "not ready"
        return False


def _group_alive(part: Part) -> bool:
    return part.pid is not None and group_alive(part.pid)


def _signal_pid(part: Part, signum: int) -> None:
    if part.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(part.pid, signum)


def _signal_group(part: Part, signum: int) -> None:
    if part.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(part.pid, signum)
