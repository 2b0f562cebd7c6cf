"""The container healthchecks judge their own process: each subscriber replica says whether it
runs, turns its loop, reaches Redis, and leads or stands by. Real ``crmcache subscribe``
processes, one of them a standby, broken in the two ways a standby breaks: frozen, and cut off
from Redis (a TCP proxy that goes away)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from crmcache import keyspace
from tests.conftest import wait_until
from tests.processes import Proc, running, subscriber_args
from tests.tcp_proxy import TcpProxy


def healthcheck(status_file: Path, max_age: str = "10") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.healthcheck", "subscriber", max_age],
        env={**os.environ, "CRM_SUBSCRIBER_STATUS_FILE": str(status_file)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def subscriber(tmp: Path, name: str, **env: str) -> tuple[Proc, Path]:
    status = tmp / f"{name}.json"
    proc_env = {**os.environ, "CRM_SUBSCRIBER_STATUS_FILE": str(status), **env}
    return Proc(subscriber_args(), proc_env, tmp / f"{name}.log"), status


def leader_pid(r: redis.Redis) -> int | None:
    token = r.get(keyspace.LEADER)
    return int(token.decode().split(":")[1]) if token else None


def healthy_saying(status: Path, words: str) -> bool:
    done = healthcheck(status)
    return done.returncode == 0 and words in done.stdout


def test_a_frozen_standby_is_unhealthy_while_its_peer_leads(
    r: redis.Redis, env: dict[str, str], tmp_path: Path
) -> None:
    # Given an active subscriber and a healthy standby
    active, active_status = subscriber(tmp_path, "active")
    with running(active):
        wait_until(lambda: leader_pid(r) == active.pid, timeout=20, what="the first leader")
        standby, standby_status = subscriber(tmp_path, "standby")
        with running(standby):
            wait_until(lambda: healthy_saying(standby_status, "standing by"), timeout=20)
            assert healthy_saying(active_status, "active (holds the lease)")
            assert f"pid {standby.pid}" in healthcheck(standby_status).stdout
            # When the standby freezes (the lease in Redis still says someone leads)
            standby.signal(signal.SIGSTOP)
            try:
                # Then its own healthcheck fails, and the active one's still passes
                wait_until(lambda: healthcheck(standby_status, "3").returncode == 1, timeout=15)
                assert "stuck or frozen" in healthcheck(standby_status, "3").stderr
                assert healthcheck(active_status, "3").returncode == 0
            finally:
                standby.signal(signal.SIGCONT)


def test_a_standby_cut_off_from_redis_is_unhealthy(
    r: redis.Redis, env: dict[str, str], redis_server: object, tmp_path: Path
) -> None:
    # Given an active subscriber and a standby that reaches Redis through a proxy
    port = int(env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    proxy, cut = TcpProxy(port), False
    active, active_status = subscriber(tmp_path, "active")
    try:
        with running(active):
            wait_until(lambda: leader_pid(r) == active.pid, timeout=20, what="the first leader")
            standby, standby_status = subscriber(tmp_path, "standby", REDIS_URL=proxy.url)
            with running(standby):
                wait_until(lambda: healthy_saying(standby_status, "standing by"), timeout=20)
                # When the standby's way to Redis goes away
                proxy.close()
                cut = True
                # Then its healthcheck says it cannot reach Redis; the active one is fine
                wait_until(lambda: healthcheck(standby_status).returncode == 1, timeout=15)
                assert "cannot reach Redis" in healthcheck(standby_status).stderr
                assert healthcheck(active_status).returncode == 0
    finally:
        if not cut:
            proxy.close()


def test_without_a_status_file_the_check_fails_and_says_why(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = healthcheck(tmp_path / "never-written.json")
    assert done.returncode == 1
    assert "no status" in done.stderr
