"""Permission matching: pure functions, no I/O.

A role grants a list of permission strings. A grant is either exact (``crm.leads.create``) or a
trailing wildcard: ``*`` grants everything, ``crm.leads.*`` grants every permission below
``crm.leads.`` (``crm.leads.create``, ``crm.leads.notes.edit``) but not ``crm.leads`` itself. A
``*`` anywhere else is an ordinary character. A requested permission is always taken literally.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

WILDCARD = "*"
_SUFFIX = ".*"


@dataclass(frozen=True, slots=True)
class Grants:
    """One role's permissions, compiled for matching: exact set, wildcard prefixes, or all."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    everything: bool

    def allows(self, permission: str) -> bool:
        if self.everything or permission in self.exact:
            return True
        return any(permission.startswith(prefix) for prefix in self.prefixes)


NO_GRANTS = Grants(frozenset(), (), False)


def compile_grants(permissions: Iterable[object]) -> Grants:
    """Compile a role's permission list; anything that is not a non-empty string is ignored."""
    exact: set[str] = set()
    prefixes: set[str] = set()
    everything = False
    for grant in permissions:
        if not isinstance(grant, str) or not grant:
            continue
        if grant == WILDCARD:
            everything = True
        elif grant.endswith(_SUFFIX) and len(grant) > len(_SUFFIX):
            prefixes.add(grant[:-1])  # keep the dot: "crm.leads.*" -> "crm.leads."
        else:
            exact.add(grant)
    # A shorter prefix makes longer ones redundant; fewer prefixes, fewer startswith calls.
    kept = tuple(
        p for p in sorted(prefixes) if not any(p != q and p.startswith(q) for q in prefixes)
    )
    return Grants(frozenset(exact), kept, everything)


def grant_matches(grant: str, permission: str) -> bool:
    """Does one grant string cover one requested permission? (The specification of ``Grants``.)"""
    if not grant:
        return False
    if grant == WILDCARD:
        return True
    if grant.endswith(_SUFFIX) and len(grant) > len(_SUFFIX):
        return permission.startswith(grant[:-1])
    return grant == permission


class Decision(enum.StrEnum):
    """Why a check came out the way it did (the ``reason`` of a PermissionCheck)."""

    GRANTED = "granted"
    NOT_GRANTED = "not-granted"
    INACTIVE = "inactive"
    UNKNOWN_USER = "unknown-user"
    UNKNOWN = "unknown"
    """Not enough data to decide (tenant not ready): never an answer, always an error."""


ACTIVE = "active"


def decide(
    status: str | None,
    role_ids: Sequence[str] | None,
    grants_of: Callable[[str], Grants | None],
    permission: str,
    ready: bool,
) -> Decision:
    """The answer for one user, given what the cache holds.

    ``status`` None: the user is not in the cache. ``grants_of(role)`` None: the role is not in
    the cache (a deleted role grants nothing). A missing user or role means "absent" only when the
    tenant is ready; otherwise a grant found is still a grant, but a denial is UNKNOWN.
    """
    if status is None:
        return Decision.UNKNOWN_USER if ready else Decision.UNKNOWN
    if status != ACTIVE:
        return Decision.INACTIVE
    if not permission:
        return Decision.NOT_GRANTED
    if role_ids is None:
        return Decision.NOT_GRANTED if ready else Decision.UNKNOWN
    missing_role = False
    for role in role_ids:
        grants = grants_of(role)
        if grants is None:
            missing_role = True
        elif grants.allows(permission):
            return Decision.GRANTED
    if missing_role and not ready:
        return Decision.UNKNOWN
    return Decision.NOT_GRANTED
