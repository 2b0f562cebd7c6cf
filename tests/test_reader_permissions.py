"""Permission checks: wildcard matching (properties), the decision rules, and the matrix read
through a real preloaded cache, both from the near-cache and from Redis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.read.permissions import Decision, compile_grants, decide, grant_matches
from tests.reader_helpers import preload, reader

SEGMENTS = st.sampled_from(["crm", "leads", "create", "x", "*", "leadsX", ""])
PERMISSIONS = st.lists(SEGMENTS, min_size=1, max_size=4).map(".".join)
GRANTS = st.lists(st.one_of(PERMISSIONS, st.just("*")), max_size=6)


# --- wildcard matching (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "permission", "allowed"),
    [
        ("crm.leads.create", "crm.leads.create", True),
        ("crm.leads.create", "crm.leads.update", False),
        ("crm.leads.*", "crm.leads.create", True),
        ("crm.leads.*", "crm.leads.notes.edit", True),
        ("crm.leads.*", "crm.leads", False),
        ("crm.leads.*", "crm.leadsX.create", False),
        ("*", "anything.at.all", True),
        ("crm.*.view", "crm.leads.view", False),  # only a trailing wildcard is one
        ("crm.*.view", "crm.*.view", True),
        ("", "", False),
    ],
)
def test_grant_matching_table(grant: str, permission: str, allowed: bool) -> None:
    # Given one grant, when a permission is checked against it, then the documented rule holds
    assert grant_matches(grant, permission) is allowed
    assert compile_grants([grant]).allows(permission) is allowed


@given(grants=GRANTS, permission=PERMISSIONS)
def test_compiled_grants_match_exactly_what_some_grant_matches(
    grants: list[str], permission: str
) -> None:
    # Given a role's grant list, when compiled, then it allows exactly what one grant allows
    assert compile_grants(grants).allows(permission) == any(
        grant_matches(g, permission) for g in grants
    )


@given(prefix=PERMISSIONS.filter(bool), suffix=PERMISSIONS.filter(bool), other=PERMISSIONS)
def test_trailing_wildcard_matches_everything_below_its_prefix_and_nothing_else(
    prefix: str, suffix: str, other: str
) -> None:
    # Given the grant "<prefix>.*"
    grants = compile_grants([f"{prefix}.*"])
    # Then everything below the prefix is allowed, the prefix itself is not, and a permission
    # outside it is allowed only when it literally starts with "<prefix>."
    assert grants.allows(f"{prefix}.{suffix}")
    assert not grants.allows(prefix)
    assert grants.allows(other) == other.startswith(f"{prefix}.")


@given(
    grants=GRANTS,
    extra=GRANTS,
    permission=PERMISSIONS,
    status=st.sampled_from(["active", "suspended", "inactive", "ACTIVE"]),
)
def test_decision_rules(grants: list[str], extra: list[str], permission: str, status: str) -> None:
    # Given a user with roles r1 (grants) and r2 (extra)
    roles = {"r1": compile_grants(grants), "r2": compile_grants(extra)}
    one = decide(status, ["r1"], roles.get, permission, True)
    both = decide(status, ["r1", "r2"], roles.get, permission, True)
    reordered = decide(status, ["r2", "r1"], roles.get, permission, True)
    # Then only an active user is ever granted, a second role never takes a grant away, and
    # the order of roles does not matter
    if status != "active":
        assert one is both is Decision.INACTIVE
    assert both == reordered
    if one is Decision.GRANTED:
        assert both is Decision.GRANTED


def test_missing_data_is_unknown_unless_the_tenant_is_ready() -> None:
    # Given no cached user, or a cached user whose role is missing
    roles: dict[str, Any] = {}
    # Then a ready tenant answers "unknown user" / "not granted", a tenant never loaded cannot
    assert decide(None, None, roles.get, "p", True) is Decision.UNKNOWN_USER
    assert decide(None, None, roles.get, "p", False) is Decision.UNKNOWN
    assert decide("active", ["gone"], roles.get, "p", True) is Decision.NOT_GRANTED
    assert decide("active", ["gone"], roles.get, "p", False) is Decision.UNKNOWN
    # ... but a grant found in partial data is still a grant
    roles["r"] = compile_grants(["p"])
    assert decide("active", ["gone", "r"], roles.get, "p", False) is Decision.GRANTED


# --- the matrix, through a real cache -------------------------------------------------------------

MATRIX = [
    ("user-456", "crm.leads.create", True, "granted"),  # sales: crm.leads.*
    ("user-456", "crm.leads.notes.edit", True, "granted"),
    ("user-456", "crm.leads", False, "not-granted"),
    ("user-456", "crm.reports.export", False, "not-granted"),
    ("user-789", "crm.leads.create", False, "inactive"),  # suspended, same role
    ("user-123", "crm.anything.at.all", True, "granted"),  # admin: *
    ("ghost", "crm.leads.create", False, "unknown-user"),
    ("user-multi", "crm.contacts.view", True, "granted"),  # viewer + sales
    ("user-multi", "crm.leads.create", True, "granted"),
    ("user-multi", "crm.reports.export", False, "not-granted"),
    ("user-norole", "crm.contacts.view", False, "not-granted"),  # role deleted upstream
]


@pytest.mark.parametrize("near_cache", [True, False], ids=["near-cache", "redis"])
def test_permission_matrix(store: Any, wrapper: Any, settings: Any, near_cache: bool) -> None:
    # Given acme's sample data plus a user with two roles and one whose only role was deleted
    wrapper.set_user(
        "acme", "user-multi", status="active", roles=["viewer", "sales"], publish=False
    )
    wrapper.set_role("acme", "temp", ["crm.contacts.view"], publish=False)
    wrapper.set_user("acme", "user-norole", status="active", roles=["temp"], publish=False)
    wrapper.delete_role("acme", "temp", publish=False)
    preload(store, settings)
    with reader(settings, near_cache=near_cache) as crm:
        for user, permission, authorized, reason in MATRIX:
            # When each check is asked twice (a miss, then a hit)
            first = crm.check_permission_detail(user, permission)
            second = crm.check_permission_detail(user, permission)
            # Then both answers are right, and the second came from the near-cache if enabled
            for answer in (first, second):
                assert (answer.authorized, answer.reason) == (authorized, reason), (
                    user,
                    permission,
                )
                assert not answer.stale
            assert second.source == ("near-cache" if near_cache else "redis")
