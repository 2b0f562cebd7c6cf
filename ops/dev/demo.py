"""``crmcache up --demo``: a scripted scenario against the running stack.

Each step changes data in the sandbox Wrapper through its admin endpoints (which PUBLISH the
matching event), then asks the HTTP API until the answer changes, and reports the answer before
and after and the measured propagation time: from just before the change was sent to the first
API answer that shows it (Wrapper → pub/sub → subscriber → Celery → Redis → API).
Without the HTTP API the same questions are asked of the Python read API, as an application
server would: ``SmartCRMConsumer.get_credit_cost`` (a number) and ``check_permission`` (a bool).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from consumer import SmartCRMConsumer
from crmcache.errors import CrmCacheError

OPERATION = "crm.leads.create"
PERMISSION = "crm.leads.create"
NEW_COST = 25
TOP_UP = 50
PROPAGATION_TIMEOUT = 15.0
MAX_LEADS = 40


class DemoFailed(RuntimeError):
    """A step's change never became visible, or a call failed."""


@dataclass
class Answer:
    """One call and what it answered."""

    call: str
    status: int
    body: Any

    def as_dict(self) -> dict[str, Any]:
        return {"call": self.call, "status": self.status, "body": self.body}

    def line(self, width: int = 150) -> str:
        text = json.dumps(self.body, separators=(", ", ": "))
        if len(text) > width:
            text = text[: width - 3] + "..."
        return f"{self.call} -> {self.status} {text}"


class Demo:
    """The scenario for one tenant and user of the sandbox's sample data."""

    def __init__(
        self,
        *,
        wrapper_url: str,
        wrapper_token: str,
        api_url: str | None,
        api_key: str | None,
        emit: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        tenant: str = "acme",
        user: str = "user-456",
    ) -> None:
        self.wrapper_url = wrapper_url
        self.api_url = api_url if api_key else None
        # Settings from the environment: `crmcache up` points it at the stack it started.
        self.crm = SmartCRMConsumer(tenant) if self.api_url is None else None
        self.tenant, self.user = tenant, user
        self.emit = emit
        self.should_stop = should_stop
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {wrapper_token}"
        self.api = requests.Session()
        if api_key:
            self.api.headers["X-API-Key"] = api_key

    def close(self) -> None:
        self.http.close()
        self.api.close()
        if self.crm is not None:
            self.crm.shutdown()

    # --- the scenario ----------------------------------------------------------------------------

    def run(self) -> None:
        via = f"the HTTP API at {self.api_url}" if self.api_url else "SmartCRMConsumer (no API)"
        self.emit(
            {
                "step": "start",
                "text": f"demo: tenant {self.tenant}, user {self.user}, answers from {via}",
            }
        )
        self.change_cost()
        self.suspend_and_reactivate()
        if self.api_url:
            self.spend_credits()
            self.top_up()
        self.emit({"step": "done", "text": "demo finished"})

    def change_cost(self) -> None:
        text = f"Change the cost of {OPERATION} to {NEW_COST} credits"
        change = (
            "PUT",
            f"/_admin/{self.tenant}/credit-configs/{OPERATION}",
            {"creditCost": NEW_COST},
        )
        self._step("credit-cost", text, self.cost_answer, change, _answers("creditCost", NEW_COST))

    def suspend_and_reactivate(self) -> None:
        self._user_status("suspend-user", "Suspend", "suspended", authorized=False)
        if self.api_url:
            self.emit({"step": "suspended-lead", "answer": self.create_lead().as_dict()})
        self._user_status("reactivate-user", "Reactivate", "active", authorized=True)

    def _user_status(self, step: str, verb: str, status: str, *, authorized: bool) -> None:
        """Set the user's status in the Wrapper; the permission check must follow."""
        change = ("PUT", f"/_admin/{self.tenant}/users/{self.user}", {"status": status})
        text = f"{verb} {self.user}"
        self._step(step, text, self.permission_answer, change, _answers("authorized", authorized))

    def spend_credits(self) -> None:
        """Create leads until the API answers 402 (credits exhausted)."""
        answers = []
        for _ in range(MAX_LEADS):
            self._check_stop()
            answer = self.create_lead()
            answers.append(answer)
            self.emit({"step": "lead", "answer": answer.as_dict()})
            if answer.status != 201:
                break
        if answers[-1].status != 402:
            raise DemoFailed(f"expected 402 once credits ran out, got {answers[-1].line()}")
        created = sum(1 for a in answers if a.status == 201)
        self.emit({"step": "credits-exhausted", "created": created, "text": "402: out of credits"})

    def top_up(self) -> None:
        before = self.cost_answer()
        credits = _field(before, "availableCredits")
        target = credits + TOP_UP if isinstance(credits, int | float) else None
        self._step(
            "top-up",
            f"Top up {self.user} by {TOP_UP} credits",
            self.cost_answer,
            ("POST", f"/_admin/{self.tenant}/users/{self.user}/credits", {"amount": TOP_UP}),
            lambda a: target is not None and _field(a, "availableCredits") == target,
            before=before,
        )
        self.emit({"step": "lead", "answer": self.create_lead().as_dict()})

    # --- questions ---------------------------------------------------------------------------

    def cost_answer(self) -> Answer:
        if self.crm is not None:
            call = f"crm.get_credit_cost({OPERATION!r})"
            cost = self._read(call, lambda crm: crm.get_credit_cost(OPERATION))
            return Answer(call, 200, {"creditCost": cost})
        path = f"/api/credits/validate?operation={OPERATION}&userId={self.user}"
        return self._api("GET", path)

    def permission_answer(self) -> Answer:
        if self.crm is not None:
            call = f"crm.check_permission({self.user!r}, {PERMISSION!r})"
            allowed = self._read(call, lambda crm: crm.check_permission(self.user, PERMISSION))
            return Answer(call, 200, {"authorized": allowed})
        return self._api(
            "GET", f"/api/permissions/check?userId={self.user}&permission={PERMISSION}"
        )

    def create_lead(self) -> Answer:
        body = {"userId": self.user, "leadData": {"name": "Demo lead", "company": "Example"}}
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return self._api("POST", "/api/leads", json=body, headers=headers)

    # --- plumbing ------------------------------------------------------------------------------

    def _step(
        self,
        step: str,
        title: str,
        ask: Callable[[], Answer],
        change: tuple[str, str, dict[str, Any]],
        changed: Callable[[Answer], bool],
        before: Answer | None = None,
    ) -> None:
        self._check_stop()
        before = before or ask()
        method, path, body = change
        started = time.perf_counter()
        with self.http.request(method, self.wrapper_url + path, json=body, timeout=10) as reply:
            if reply.status_code != 200:
                raise DemoFailed(f"{method} {path} -> {reply.status_code} {reply.text[:200]}")
        after = ask()
        while not changed(after):
            if time.perf_counter() - started > PROPAGATION_TIMEOUT:
                raise DemoFailed(f"{title}: not visible after {PROPAGATION_TIMEOUT:.0f}s")
            self._check_stop()
            time.sleep(0.001)
            after = ask()
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.emit(
            {
                "step": step,
                "title": title,
                "before": before.as_dict(),
                "change": {"call": f"{method} {path}", "body": body},
                "after": after.as_dict(),
                "propagationMs": round(elapsed_ms, 1),
            }
        )

    def _api(self, method: str, path: str, **kwargs: Any) -> Answer:
        assert self.api_url is not None
        with self.api.request(method, self.api_url + path, timeout=10, **kwargs) as reply:
            try:
                body = reply.json()
            except ValueError:
                body = reply.text[:200]
            return Answer(f"{method} {path}", reply.status_code, body)

    def _read(self, call: str, read: Callable[[SmartCRMConsumer], Any]) -> Any:
        assert self.crm is not None
        try:
            return read(self.crm)
        except CrmCacheError as exc:
            raise DemoFailed(f"{call}: {exc}") from None

    def _check_stop(self) -> None:
        if self.should_stop():
            raise DemoFailed("interrupted")


def _field(answer: Answer, name: str) -> Any:
    return answer.body.get(name) if isinstance(answer.body, dict) else None


def _answers(name: str, value: Any) -> Callable[[Answer], bool]:
    """Whether an answer's field ``name`` says ``value`` (a bool by identity: 1 is not True)."""
    if isinstance(value, bool):
        return lambda answer: _field(answer, name) is value
    return lambda answer: bool(_field(answer, name) == value)


def render(event: dict[str, Any]) -> str:
    """One demo event as text for a terminal."""
    step = event.get("step")
    if "text" in event and "answer" not in event:
        return str(event["text"])
    if step == "lead" or step == "suspended-lead":
        answer = Answer(**event["answer"])
        label = "lead (suspended user)" if step == "suspended-lead" else "lead"
        return f"    {label:<22} {answer.line()}"
    before, after = Answer(**event["before"]), Answer(**event["after"])
    change = event["change"]
    return "\n".join(
        [
            f"  {event['title']}",
            f"    before  {before.line()}",
            f"    change  {change['call']} {json.dumps(change['body'])}",
            f"    after   {after.line()}",
            f"    visible after {event['propagationMs']} ms (change sent -> changed answer)",
        ]
    )
