"""``crmcache up --demo`` without the HTTP API: the scenario asks the Python read API, through a
real subscriber and worker applying the sandbox's events. (With the API: tests/test_stack.py.)"""

from __future__ import annotations

from typing import Any

from crmcache.store import Store
from ops.dev.demo import Demo, render
from tests.reader_helpers import preload


def test_the_demo_without_the_api_reads_plain_values_from_smart_crm_consumer(
    store: Store, wrapper: Any, settings: Any, subscriber: Any
) -> None:
    # Given acme loaded and events flowing (subscriber -> worker -> Redis)
    preload(store, settings)
    events: list[dict[str, Any]] = []
    demo = Demo(
        wrapper_url=wrapper.url,
        wrapper_token="test-token",
        api_url=None,
        api_key=None,
        emit=events.append,
        should_stop=lambda: False,
    )
    # When the scenario runs
    try:
        demo.run()
    finally:
        demo.close()
    # Then each change is seen through the seed-shaped answers: a number, then bools
    steps = {e["step"]: e for e in events if "propagationMs" in e}
    assert set(steps) == {"credit-cost", "suspend-user", "reactivate-user"}
    cost = steps["credit-cost"]
    assert cost["before"]["call"] == "crm.get_credit_cost('crm.leads.create')"
    assert (cost["before"]["body"], cost["after"]["body"]) == (
        {"creditCost": 1},
        {"creditCost": 25},
    )
    suspended, back = steps["suspend-user"], steps["reactivate-user"]
    assert (suspended["before"]["body"], suspended["after"]["body"]) == (
        {"authorized": True},
        {"authorized": False},
    )
    assert back["after"]["body"] == {"authorized": True}
    assert all(0 < step["propagationMs"] < 15_000 for step in steps.values())
    assert "SmartCRMConsumer" in render(events[0])
