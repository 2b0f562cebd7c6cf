"""``SandboxWrapper``: a development stand-in for the Wrapper, a real HTTP server on loopback.

It serves the Wrapper API (docs/wrapper-api.md) from in-memory data, publishes the events of
README.md's "The event contract" on Redis when its Python mutators (or ``/_admin`` endpoints)
change that data, records what it was asked, and can be told to fail. For local runs, demos
and tests; never for production.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from sandbox.errors import PublishFailed
from sandbox.faults import Fault, FaultInjector
from sandbox.handler import SandboxServer
from sandbox.publisher import EventPublisher, channel
from sandbox.routes import Request
from sandbox.state import Change, SandboxState

CONSUME_PATH = "/api/credits/consume"


class SandboxWrapper:
    """The Wrapper's API on ``url``, with Python mutators that publish change events."""

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        redis_url: str | None = None,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.state = SandboxState(data)
        self.token = token or None
        self.redis_url = redis_url
        self.host = host
        self.port = port
        self.faults = FaultInjector()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_log: list[tuple[str, str, str | None]] = []
        self.consumed: dict[str, dict[str, Any]] = {}
        self.consume_calls: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []
        self.dropped: Counter[tuple[str, str]] = Counter()
        """Requests refused while down: their connections were closed unanswered."""
        self._down = False
        self._observed = threading.Lock()
        # Held from a change to its PUBLISH, so that events reach Redis in seq order.
        self._changing = threading.RLock()
        self._publisher = EventPublisher(redis_url)
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox Wrapper is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxWrapper:
        """Serve in a daemon thread. After ``stop``, starts again on the same port."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = SandboxServer((self.host, self.port), self)
        self.port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-wrapper-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, and close the Redis client. Idempotent."""
        self._stopping.set()
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._publisher.close()

    def __enter__(self) -> SandboxWrapper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def sleep(self, seconds: float) -> None:
        """Sleep for an injected delay, waking early when the server stops."""
        self._stopping.wait(seconds)

    # --- fault injection -----------------------------------------------------------------------

    def set_fault(
        self,
        status: int | None = None,
        delay: float = 0.0,
        path_prefix: str = "",
        times: int | None = None,
        *,
        drop: bool = False,
        after: bool = False,
    ) -> Fault:
        """Make the next ``times`` (None: all) requests under ``path_prefix`` misbehave.

        ``status``: answer it with a JSON error; ``delay``: sleep first; ``drop``: close the
        connection unanswered; ``after``: handle the request for real first, then fail the answer.
        ``/_admin`` paths are exempt unless ``path_prefix`` names them.
        """
        fault = Fault(status, delay, path_prefix, times, drop, after)
        self.faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_down(self, down: bool = True) -> None:
        """While down, every Wrapper API request gets its connection closed unanswered."""
        self._down = down

    @property
    def down(self) -> bool:
        return self._down

    # --- observation ---------------------------------------------------------------------------

    def record_request(self, request: Request) -> None:
        key = _consume_key(request) if request.path == CONSUME_PATH else None
        with self._observed:
            self.requests[request.method, request.path] += 1
            self.request_log.append((request.method, request.path, request.tenant))
            if key is not None:
                self.consume_calls[key] += 1

    def record_dropped(self, method: str, path: str) -> None:
        with self._observed:
            self.dropped[method, path] += 1

    def reset(self, data: Mapping[str, Any] | None = None) -> None:
        """Back to `data` (default: the bundled sample data): no faults, up, no stats."""
        with self._changing:
            self.state = SandboxState(data)
        self.clear_faults()
        self.set_down(False)
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget recorded requests, consume calls and events (not the data)."""
        with self._observed:
            self.requests.clear()
            self.request_log.clear()
            self.consumed.clear()
            self.consume_calls.clear()
            self.events.clear()
            self.dropped.clear()

    def consume(self, tenant: str, body: object) -> dict[str, Any]:
        """``POST /api/credits/consume``: charge once per idempotencyKey."""
        answer, first = self.state.consume(tenant, body)
        if first and isinstance(body, dict):
            with self._observed:
                self.consumed.setdefault(answer["idempotencyKey"], dict(body))
        return answer

    # --- mutators: change the data, publish the event, return it -------------------------------

    def set_credit_cost(
        self, tenant: str, op: str, cost: float, *, publish: bool = True
    ) -> dict[str, Any]:
        return self._change(lambda: self.state.set_credit_cost(tenant, op, cost), publish)

    def set_role(
        self,
        tenant: str,
        role_id: str,
        permissions: list[str],
        role_name: str | None = None,
        *,
        publish: bool = True,
    ) -> dict[str, Any]:
        return self._change(
            lambda: self.state.set_role(tenant, role_id, permissions, role_name), publish
        )

    def set_user(
        self,
        tenant: str,
        user_id: str,
        status: str | None = None,
        roles: list[str] | None = None,
        profile: dict[str, Any] | None = None,
        *,
        publish: bool = True,
    ) -> dict[str, Any]:
        return self._change(
            lambda: self.state.set_user(tenant, user_id, status, roles, profile), publish
        )

    def set_hierarchy(
        self,
        tenant: str,
        entity_id: str,
        node: Mapping[str, Any],
        affected: Iterable[str] = (),
        *,
        publish: bool = True,
    ) -> dict[str, Any]:
        return self._change(
            lambda: self.state.set_hierarchy(tenant, entity_id, node, affected), publish
        )

    def top_up_credits(
        self, tenant: str, user_id: str, amount: float, *, publish: bool = True
    ) -> dict[str, Any]:
        """Add ``amount`` (negative: remove) to the balance; publishes user-credits-changed."""
        return self._change(lambda: self.state.top_up_credits(tenant, user_id, amount), publish)

    def delete_credit_cost(self, tenant: str, op: str, *, publish: bool = True) -> dict[str, Any]:
        return self._change(lambda: self.state.delete_credit_cost(tenant, op), publish)

    def delete_role(self, tenant: str, role_id: str, *, publish: bool = True) -> dict[str, Any]:
        return self._change(lambda: self.state.delete_role(tenant, role_id), publish)

    def delete_user(self, tenant: str, user_id: str, *, publish: bool = True) -> dict[str, Any]:
        return self._change(lambda: self.state.delete_user(tenant, user_id), publish)

    def delete_hierarchy(
        self, tenant: str, entity_id: str, affected: Iterable[str] = (), *, publish: bool = True
    ) -> dict[str, Any]:
        return self._change(
            lambda: self.state.delete_hierarchy(tenant, entity_id, affected), publish
        )

    def add_tenant(self, tenant: str, data: Mapping[str, Any] | None = None) -> None:
        """A new tenant (empty unless ``data`` is given); no event: tenants have no stream."""
        self.state.add_tenant(tenant, data)

    def remove_tenant(self, tenant: str) -> None:
        self.state.remove_tenant(tenant)

    def publish_raw(self, channel_name: str, payload: str | bytes) -> int:
        """PUBLISH anything (malformed events, other tenants' channels); returns receivers."""
        return self._publisher.publish(channel_name, payload)

    def _change(self, mutate: Callable[[], Change], publish: bool) -> dict[str, Any]:
        """Apply one mutation and publish its stamped event (``publish=False``: a lost event,
        whose ``seq`` the next event skips over)."""
        with self._changing:
            change = mutate()
            event = self._publisher.stamp(change)
            with self._observed:
                self.events.append(event)
            if publish:
                try:
                    self._publisher.publish_event(change.tenant, change.stream, event)
                except redis.RedisError as exc:
                    where = channel(change.tenant, change.stream)
                    raise PublishFailed(
                        f"changed, but PUBLISH on {where} failed: {exc}", event
                    ) from exc
        return event


def _consume_key(request: Request) -> str | None:
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return None
    key = body.get("idempotencyKey") if isinstance(body, dict) else None
    return str(key) if isinstance(key, str | int) and not isinstance(key, bool) else None
