"""The seed's read API: plain values from the seed-named methods (a cost or None, a bool, a
dict or None, a balance), the rich answers from the ``*_detail`` methods beside them, and
detail objects that refuse to be used as booleans."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.read.results import CreditCost, PermissionCheck, ReferenceResult
from crmcache.events import Event
from crmcache.keyspace import TenantKeys
from crmcache.store import Store
from tests.conftest import wait_until
from tests.reader_helpers import preload, reader

KEYS = TenantKeys.of("acme")
FREE = "crm.contacts.view"
"""An operation of acme's sample data that costs 0 credits."""

paths = pytest.mark.parametrize("near_cache", [True, False], ids=["near-cache", "redis"])


def apply(store: Store, stream: str, event_type: str, data: dict[str, Any]) -> None:
    """The write side's path: one event stamped and applied by the store's Lua script."""
    seq = int(store.redis.incr(KEYS.seq))
    event = Event(tenant="acme", stream=stream, event_type=event_type, data=data, seq=seq)
    store.apply_events("acme", [event])


# --- get_credit_cost -----------------------------------------------------------------------------


@paths
def test_get_credit_cost_is_the_number_and_none_when_not_configured(
    store: Store, wrapper: Any, settings: Any, near_cache: bool
) -> None:
    # Given acme loaded, with a free operation, and events setting a cost to 0 and deleting one
    preload(store, settings)
    apply(
        store, "credit-configs", "credit-config-changed", {"operationCode": "crm.x", "newValue": 0}
    )
    apply(store, "credit-configs", "credit-config-deleted", {"operationCode": "crm.leads.update"})
    with reader(settings, near_cache=near_cache) as crm:
        for _ in range(2):  # a miss, then (near-cache on) a hit
            # Then a cost is a plain number, 0 included, and "not configured" is None
            assert crm.get_credit_cost("crm.leads.create") == 1
            assert crm.get_credit_cost("crm.reports.export") == 5
            for free in (FREE, "crm.x"):
                cost = crm.get_credit_cost(free)
                assert cost == 0 and cost is not None and type(cost) is int
            assert crm.get_credit_cost("crm.leads.update") is None
            assert crm.get_credit_cost("crm.never.configured") is None


@paths
def test_a_cost_of_zero_is_configured(
    store: Store, wrapper: Any, settings: Any, near_cache: bool
) -> None:
    # Given acme loaded (its free operation costs 0)
    preload(store, settings)
    with reader(settings, near_cache=near_cache) as crm:
        for _ in range(2):
            # When the detail of the free and of an unknown operation is asked
            free = crm.get_credit_cost_detail(FREE)
            unknown = crm.get_credit_cost_detail("crm.never.configured")
            # Then 0 is a configured cost; only a missing cost is "not configured"
            assert (free.cost, free.configured) == (0, True)
            assert (unknown.cost, unknown.configured) == (None, False)
    assert CreditCost("op", 0, True, False, 0.0, "redis").configured is True
    assert CreditCost("op", 0.0, True, False, 0.0, "redis").configured is True
    assert CreditCost("op", None, True, False, 0.0, "redis").configured is False


# --- check_permission ----------------------------------------------------------------------------


def test_check_permission_is_false_for_denied_suspended_unknown_and_deleted_users(
    store: Store, wrapper: Any, settings: Any, subscriber: Any
) -> None:
    # Given acme loaded; then, through the Wrapper's events applied by the real worker, the
    # admin (granted everything) deleted and the viewer suspended
    preload(store, settings)
    wrapper.delete_user("acme", "user-123")
    wrapper.set_user("acme", "user-viewer", status="suspended")
    for near_cache in (True, False):
        with reader(settings, near_cache=near_cache) as crm:
            wait_until(
                lambda: (
                    crm.check_permission_detail("user-123", "crm.x").reason == "unknown-user"
                    and crm.check_permission_detail("user-viewer", FREE).reason == "inactive"
                ),
                what="the worker applying user-deleted and user-changed",
            )
            asked = [
                ("user-456", "crm.leads.create"),  # granted by sales' crm.leads.*
                ("user-456", "crm.reports.export"),  # denied: no role grants it
                ("user-789", "crm.leads.create"),  # suspended in the sample data
                ("user-viewer", FREE),  # suspended by the event
                ("ghost", "crm.leads.create"),  # unknown
                ("user-123", "crm.leads.create"),  # deleted by the event
            ]
            # When the seed's check is written as the seed wrote it
            allowed = []
            for user, permission in asked:
                if crm.check_permission(user, permission):
                    allowed.append(user)
            # Then only the granted user passes, and every answer is a bool
            assert allowed == ["user-456"]
            assert {type(crm.check_permission(u, p)) for u, p in asked} == {bool}
            assert not crm.check_permission("user-123", "crm.leads.create")


# --- reference reads -----------------------------------------------------------------------------


def test_reference_reads_are_the_value_and_none_for_a_404(
    store: Store, wrapper: Any, settings: Any
) -> None:
    preload(store, settings)
    with reader(settings) as crm:
        for _ in range(2):  # fetched from the Wrapper, then cached in Redis
            # Then profiles and hierarchy nodes are the Wrapper's objects, None when it said 404
            profile = crm.get_user_profile("user-456")
            assert isinstance(profile, dict) and profile["name"] == "Sam Seller"
            assert crm.get_user_profile("nobody") is None
            node = crm.get_hierarchy("team-sales")
            assert isinstance(node, dict) and node["parentId"] == "org-acme"
            assert crm.get_hierarchy("nowhere") is None
            # ... and a balance is a number (0 is a balance), None for a user the Wrapper
            # does not know (as a profile's 404)
            assert crm.get_user_credits("user-456") == 100
            balance = crm.get_user_credits("user-viewer")
            assert balance == 0 and balance is not None and type(balance) is int
            assert crm.get_user_credits("nobody") is None


# --- the seed's usage ----------------------------------------------------------------------------


def test_the_seeds_usage_ported_as_is(store: Store, wrapper: Any, settings: Any) -> None:
    preload(store, settings)
    with reader(settings) as crm:
        # When the seed's credit check is written as the seed wrote it
        cost = crm.get_credit_cost("crm.leads.create")
        balance = crm.get_user_credits("user-456")
        # Then the numbers compare
        assert cost is not None and balance is not None
        assert balance >= cost
        assert crm.get_user_credits("user-viewer") >= crm.get_credit_cost(FREE)  # 0 >= 0
        assert not crm.get_user_credits("user-viewer") >= crm.get_credit_cost("crm.leads.create")
        # ... and "not configured" is tested with `is None` (the seed's `if not cost` would
        # also call the free operation "not configured")
        assert crm.get_credit_cost("crm.never.configured") is None
        assert crm.get_credit_cost(FREE) is not None
        # ... and the seed's permission guard keeps a suspended user out
        if crm.check_permission("user-789", "crm.leads.create"):
            pytest.fail("a suspended user passed the seed's permission guard")


# --- detail objects are not booleans --------------------------------------------------------------


def test_truth_testing_a_detail_raises_and_names_the_field_to_read(
    store: Store, wrapper: Any, settings: Any
) -> None:
    preload(store, settings)
    with reader(settings) as crm:
        # Given every kind of detail the reader gives, denied and missing ones included
        details: list[tuple[Any, str]] = [
            (crm.get_credit_cost_detail(FREE), r"CreditCost is not a boolean: read \.cost"),
            (crm.get_credit_cost_detail("crm.none"), r"CreditCost is not a boolean: read \.cost"),
            (crm.peek_credit_cost_detail(FREE), r"CreditCost is not a boolean"),
            (
                crm.check_permission_detail("user-789", "crm.leads.create"),
                r"PermissionCheck is not a boolean: read \.authorized",
            ),
            (
                crm.peek_permission_detail("user-789", "crm.leads.create"),
                r"PermissionCheck is not a boolean: read \.authorized",
            ),
            (crm.get_user_profile_detail("nobody"), r"ReferenceResult is not a boolean: read \."),
            (crm.get_hierarchy_detail("team-sales"), r"ReferenceResult is not a boolean"),
            (crm.get_user_credits_detail("user-viewer"), r"ReferenceResult is not a boolean"),
        ]
        assert {type(d) for d, _ in details} == {CreditCost, PermissionCheck, ReferenceResult}
        for detail, message in details:
            # Then truth-testing it in any form raises TypeError saying which field to read
            with pytest.raises(TypeError, match=message):
                bool(detail)
            with pytest.raises(TypeError, match=message):
                if detail:
                    pass
            with pytest.raises(TypeError, match=message):
                assert not detail
