"""The sandbox Wrapper's data: per tenant, credit costs, roles, users with credits, a hierarchy.

Thread-safe: one re-entrant lock guards everything and every read returns a copy, so HTTP threads
and a test's Python mutators can run at the same time. Mutators return the ``Change`` (the event)
they cause; stamping and publishing it is the server's job.
"""

from __future__ import annotations

import bisect
import copy
import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sandbox.errors import InvalidInput, NotFound
from sandbox.validate import (
    Number,
    consume_request,
    decode_cursor,
    encode_cursor,
    ident,
    json_copy,
    number,
    parse_user,
    records,
    strings,
    tenant_name,
)

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000


@dataclass(frozen=True)
class Change:
    """What one mutation did: the event it causes on channel ``crm:{tenant}:{stream}``."""

    tenant: str
    stream: str
    event_type: str
    entity: str
    data: dict[str, Any]


@dataclass
class Tenant:
    credit_costs: dict[str, Number] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    hierarchy: dict[str, dict[str, Any]] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """idempotencyKey -> the answer of its first consume call."""
    sorted_user_ids: list[str] | None = None
    """Cache for cursor pagination; reset whenever a user is added or removed."""


def default_data() -> dict[str, Any]:
    """The bundled sample data (``sandbox/data.json``)."""
    text = resources.files("sandbox").joinpath("data.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


class SandboxState:
    """All tenants' data, loaded from ``{"tenants": {id: {...}}}`` or ``{id: {...}}``."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self.lock = threading.RLock()
        self._tenants: dict[str, Tenant] = {}
        raw = default_data() if data is None else data
        if not isinstance(raw, Mapping):
            raise InvalidInput("sandbox data must be a JSON object")
        tenants = raw["tenants"] if isinstance(raw.get("tenants"), Mapping) else raw
        for tenant_id, tenant_data in tenants.items():
            self._tenants[tenant_name(tenant_id)] = _parse_tenant(tenant_data)

    # --- reads (the Wrapper API) ---------------------------------------------------------------

    def tenant_ids(self) -> list[str]:
        with self.lock:
            return list(self._tenants)

    def has_tenant(self, tenant: str) -> bool:
        with self.lock:
            return tenant in self._tenants

    def credit_configs(self, tenant: str) -> list[dict[str, Any]]:
        with self.lock:
            costs = self._tenant(tenant).credit_costs
            return [{"operationCode": op, "creditCost": cost} for op, cost in costs.items()]

    def roles(self, tenant: str) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self._tenant(tenant).roles.values()))

    def user_access_page(self, tenant: str, cursor: str | None, limit: int) -> dict[str, Any]:
        """One page of ``{userId, status, roles}`` in userId order; the cursor is opaque."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        after = decode_cursor(cursor) if cursor else None
        with self.lock:
            data = self._tenant(tenant)
            if data.sorted_user_ids is None:
                data.sorted_user_ids = sorted(data.users)
            ids = data.sorted_user_ids
            start = 0 if after is None else bisect.bisect_right(ids, after)
            page = ids[start : start + limit]
            items = [
                {
                    "userId": uid,
                    "status": data.users[uid]["status"],
                    "roles": list(data.users[uid]["roles"]),
                }
                for uid in page
            ]
            more = start + limit < len(ids)
        return {"items": items, "nextCursor": encode_cursor(page[-1]) if more else None}

    def profile(self, tenant: str, user_id: str) -> dict[str, Any]:
        with self.lock:
            user = self._user(tenant, user_id)
            return {"userId": user_id, **copy.deepcopy(user["profile"])}

    def hierarchy_node(self, tenant: str, entity_id: str) -> dict[str, Any]:
        with self.lock:
            node = self._tenant(tenant).hierarchy.get(entity_id)
            if node is None:
                raise NotFound(f"unknown hierarchy entity {entity_id!r}")
            return copy.deepcopy(node)

    def credits(self, tenant: str, user_id: str) -> dict[str, Any]:
        with self.lock:
            return {"userId": user_id, "available": self._user(tenant, user_id)["credits"]}

    def consume(self, tenant: str, body: object) -> tuple[dict[str, Any], bool]:
        """Charge once per idempotencyKey; returns (answer, whether this call charged).

        The cache already enforced the balance when it deducted, so the Wrapper records the usage
        and floors the balance at 0 rather than refusing a report.
        """
        key, user_id, amount = consume_request(body)
        with self.lock:
            data = self._tenant(tenant)
            done = data.receipts.get(key)
            if done is not None:
                return dict(done), False
            user = self._user(tenant, user_id)
            user["credits"] = max(0, user["credits"] - amount)
            answer = {"idempotencyKey": key, "accepted": True, "available": user["credits"]}
            data.receipts[key] = answer
            return dict(answer), True

    def snapshot(self, tenant: str) -> dict[str, Any]:
        """The tenant's data in the shape ``SandboxState`` loads."""
        with self.lock:
            data = self._tenant(tenant)
            return {
                "creditConfigs": self.credit_configs(tenant),
                "roles": copy.deepcopy(list(data.roles.values())),
                "users": copy.deepcopy(list(data.users.values())),
                "hierarchy": copy.deepcopy(data.hierarchy),
            }

    # --- mutations (each returns the event it causes) --------------------------------------

    def add_tenant(self, tenant: str, data: Mapping[str, Any] | None = None) -> None:
        parsed = _parse_tenant(data or {})
        with self.lock:
            self._tenants[tenant_name(tenant)] = parsed

    def remove_tenant(self, tenant: str) -> None:
        with self.lock:
            self._tenant(tenant)
            del self._tenants[tenant]

    def set_credit_cost(self, tenant: str, op: object, cost: object) -> Change:
        op_code, new = ident(op, "operationCode"), number(cost, "creditCost")
        with self.lock:
            costs = self._tenant(tenant).credit_costs
            change: dict[str, Any] = {"operationCode": op_code, "newValue": new}
            if op_code in costs:
                change["oldValue"] = costs[op_code]
            costs[op_code] = new
        return Change(tenant, "credit-configs", "credit-config-changed", op_code, change)

    def delete_credit_cost(self, tenant: str, op: str) -> Change:
        with self.lock:
            costs = self._tenant(tenant).credit_costs
            if costs.pop(op, None) is None:
                raise NotFound(f"unknown operation {op!r}")
        return Change(tenant, "credit-configs", "credit-config-deleted", op, {"operationCode": op})

    def set_role(
        self, tenant: str, role_id: object, permissions: object, role_name: object = None
    ) -> Change:
        rid = ident(role_id, "roleId")
        perms = strings(permissions, "permissions")
        if role_name is not None and not isinstance(role_name, str):
            raise InvalidInput("roleName must be a string")
        with self.lock:
            roles = self._tenant(tenant).roles
            name = role_name or roles.get(rid, {}).get("roleName") or rid
            roles[rid] = {"roleId": rid, "roleName": name, "permissions": perms}
            data = copy.deepcopy(roles[rid])
        return Change(tenant, "roles", "role-changed", rid, data)

    def delete_role(self, tenant: str, role_id: str) -> Change:
        with self.lock:
            if self._tenant(tenant).roles.pop(role_id, None) is None:
                raise NotFound(f"unknown role {role_id!r}")
        return Change(tenant, "roles", "role-deleted", role_id, {"roleId": role_id})

    def set_user(
        self,
        tenant: str,
        user_id: object,
        status: object = None,
        roles: object = None,
        profile: object = None,
    ) -> Change:
        """Create or update a user; the event carries userId plus the status/roles given."""
        uid = ident(user_id, "userId")
        fields = {"userId": uid, "status": status, "roles": roles, "profile": profile}
        update = parse_user({k: v for k, v in fields.items() if v is not None}, partial=True)
        with self.lock:
            data = self._tenant(tenant)
            user = data.users.get(uid)
            if user is None:
                user = parse_user({"userId": uid}, partial=False)
                data.users[uid] = user
                data.sorted_user_ids = None
                update.setdefault("status", user["status"])
                update.setdefault("roles", user["roles"])
            user.update(copy.deepcopy(update))
        event = {"userId": uid}
        event.update({k: update[k] for k in ("status", "roles") if k in update})
        return Change(tenant, "users", "user-changed", uid, event)

    def delete_user(self, tenant: str, user_id: str) -> Change:
        with self.lock:
            data = self._tenant(tenant)
            if data.users.pop(user_id, None) is None:
                raise NotFound(f"unknown user {user_id!r}")
            data.sorted_user_ids = None
        return Change(tenant, "users", "user-deleted", user_id, {"userId": user_id})

    def top_up_credits(self, tenant: str, user_id: str, amount: object) -> Change:
        delta = number(amount, "amount", minimum=-math.inf)
        with self.lock:
            user = self._user(tenant, user_id)
            if user["credits"] + delta < 0:
                raise InvalidInput(f"balance {user['credits']} cannot go below 0")
            user["credits"] += delta
            data = {"userId": user_id, "available": user["credits"], "delta": delta}
        return Change(tenant, "users", "user-credits-changed", user_id, data)

    def set_hierarchy(
        self, tenant: str, entity_id: object, node: object, affected: Iterable[object] = ()
    ) -> Change:
        eid = ident(entity_id, "entityId")
        if not isinstance(node, Mapping):
            raise InvalidInput("a hierarchy node must be a JSON object")
        others = [ident(e, "affectedEntityIds") for e in affected]
        stored = {**json_copy(node, "node"), "entityId": eid}
        stored.pop("affectedEntityIds", None)
        with self.lock:
            self._tenant(tenant).hierarchy[eid] = stored
        data = {"entityId": eid, "affectedEntityIds": others}
        return Change(tenant, "hierarchy", "hierarchy-changed", eid, data)

    def delete_hierarchy(
        self, tenant: str, entity_id: str, affected: Iterable[object] = ()
    ) -> Change:
        others = [ident(e, "affectedEntityIds") for e in affected]
        with self.lock:
            if self._tenant(tenant).hierarchy.pop(entity_id, None) is None:
                raise NotFound(f"unknown hierarchy entity {entity_id!r}")
        data = {"entityId": entity_id, "affectedEntityIds": others}
        return Change(tenant, "hierarchy", "hierarchy-changed", entity_id, data)

    # --- helpers -----------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> Tenant:
        data = self._tenants.get(tenant)
        if data is None:
            raise NotFound(f"unknown tenant {tenant!r}")
        return data

    def _user(self, tenant: str, user_id: str) -> dict[str, Any]:
        user = self._tenant(tenant).users.get(user_id)
        if user is None:
            raise NotFound(f"unknown user {user_id!r}")
        return user


def _parse_tenant(raw: object) -> Tenant:
    if not isinstance(raw, Mapping):
        raise InvalidInput("a tenant's data must be an object")
    tenant = Tenant()
    for item in records(raw.get("creditConfigs", []), "creditConfigs"):
        op = ident(item.get("operationCode"), "operationCode")
        tenant.credit_costs[op] = number(item.get("creditCost"), "creditCost")
    for item in records(raw.get("roles", []), "roles"):
        rid = ident(item.get("roleId"), "roleId")
        perms = strings(item.get("permissions"), "permissions")
        name = item.get("roleName") or rid
        tenant.roles[rid] = {"roleId": rid, "roleName": str(name), "permissions": perms}
    for item in records(raw.get("users", []), "users"):
        user = parse_user(item, partial=False)
        tenant.users[user["userId"]] = user
    hierarchy = raw.get("hierarchy", {})
    if not isinstance(hierarchy, Mapping):
        raise InvalidInput("hierarchy must be an object of entityId -> node")
    for key, node in hierarchy.items():
        if not isinstance(node, Mapping):
            raise InvalidInput(f"hierarchy node {key!r} must be an object")
        tenant.hierarchy[ident(key, "entityId")] = {**json_copy(node, "node"), "entityId": key}
    return tenant
