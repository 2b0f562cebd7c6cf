"""A reader process of tests/test_new_enemy.py: ``python -m tests.enemy_reader TENANT``.

It reads one JSON command a line on stdin and answers each with one JSON line on stdout, using
``SmartCRMConsumer`` (near-cache on) exactly as a CRM app server would:

- ``{"op": "grant", "items": [[user, permission, roles_token, users_token], ...]}``: after the
  grants were published, check each with ``at_least_as_fresh`` at both tokens (the second must
  grant), then once with ``minimize_latency`` so the near-cache holds the grant.
- ``{"op": "revoke", "items": [[user, permission, token], ...]}``: right after the revokes were
  published, check each with ``at_least_as_fresh:<token>``; every grant is a new-enemy failure.

Answers count ``checked``, ``granted``, ``not_reached`` (``TokenNotReached``) and name the first
few users that broke the expectation. It says ``ready`` once its near-cache is loaded.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from consumer import SmartCRMConsumer
from crmcache.errors import TokenNotReached

SHOWN = 5


def check(crm: SmartCRMConsumer, user: str, permission: str, token: str) -> bool | None:
    """The answer at ``token``; None when the cache did not reach it in time."""
    try:
        return crm.check_permission(user, permission, consistency=f"at_least_as_fresh:{token}")
    except TokenNotReached:
        return None


def after_grants(crm: SmartCRMConsumer, items: list[list[str]]) -> dict[str, Any]:
    granted, not_reached, denied = 0, 0, []
    for user, permission, roles_token, users_token in items:
        answers = [check(crm, user, permission, t) for t in (roles_token, users_token)]
        if answers[1] is None:
            not_reached += 1
        elif answers[1]:
            granted += 1
        elif len(denied) < SHOWN:
            denied.append(user)
        crm.check_permission(user, permission)  # warm the near-cache with the grant
    return {"checked": len(items), "granted": granted, "not_reached": not_reached, "bad": denied}


def after_revokes(crm: SmartCRMConsumer, items: list[list[str]]) -> dict[str, Any]:
    granted, not_reached, enemies = 0, 0, []
    for user, permission, token in items:
        answer = check(crm, user, permission, token)
        if answer is None:
            not_reached += 1
        elif answer:
            granted += 1
            if len(enemies) < SHOWN:
                enemies.append(f"{user} {permission} @{token}")
    return {"checked": len(items), "granted": granted, "not_reached": not_reached, "bad": enemies}


def main(tenant: str) -> int:
    crm = SmartCRMConsumer(tenant).initialize()  # the test starts readers once it is loaded
    print(json.dumps({"ready": True}), flush=True)
    handlers = {"grant": after_grants, "revoke": after_revokes}
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        print(json.dumps(handlers[command["op"]](crm, command["items"])), flush=True)
    crm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
