"""Routing: the Wrapper API (docs/wrapper-api.md) under ``/api`` and the sandbox's control API
under ``/_admin``.

Pure request -> (status, JSON) functions; the HTTP plumbing lives in ``handler``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sandbox.errors import InvalidInput, NotFound, Unauthorized
from sandbox.faults import Fault
from sandbox.state import DEFAULT_PAGE_SIZE
from sandbox.validate import tenant_name

if TYPE_CHECKING:
    from sandbox.server import SandboxWrapper

Reply = tuple[int, Any]


@dataclass
class Request:
    method: str
    path: str
    """The path as received, without the query string (still URL-encoded)."""
    query: dict[str, list[str]] = field(default_factory=dict)
    tenant: str | None = None
    authorization: str | None = None
    body: bytes = b""

    @property
    def segments(self) -> list[str]:
        """URL-decoded path segments; one trailing slash is ignored."""
        path = self.path[:-1] if self.path.endswith("/") and len(self.path) > 1 else self.path
        return [unquote(part) for part in path.split("/")[1:]]

    def json(self) -> Any:
        if not self.body:
            raise InvalidInput("a JSON body is required")
        try:
            return json.loads(self.body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"invalid JSON body: {exc}") from None

    def json_object(self, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        unknown = sorted(set(body) - set(allowed)) if allowed is not None else []
        if unknown:
            raise InvalidInput(f"unknown field(s) {unknown}; allowed: {list(allowed or ())}")
        return body

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


def handle(wrapper: SandboxWrapper, request: Request) -> Reply:
    check_token(wrapper.token, request.authorization)
    segments = request.segments
    if segments[:1] == ["_admin"]:
        return _admin(wrapper, request, segments[1:])
    if request.method == "GET" and segments == ["api", "tenants"]:
        return 200, [{"tenantId": t} for t in wrapper.state.tenant_ids()]
    if segments[:1] != ["api"]:
        raise NotFound(f"no route {request.method} {request.path}")
    tenant = _tenant(wrapper, request.tenant)
    if request.method == "GET":
        return _api_get(wrapper, request, tenant, segments[1:])
    if request.method == "POST" and segments == ["api", "credits", "consume"]:
        return 200, wrapper.consume(tenant, request.json())
    raise NotFound(f"no route {request.method} {request.path}")


def check_token(token: str | None, authorization: str | None) -> None:
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise Unauthorized("missing or wrong bearer token")


def _tenant(wrapper: SandboxWrapper, header: str | None) -> str:
    if not header:
        raise InvalidInput("the X-Tenant-ID header is required")
    tenant = tenant_name(header)
    if not wrapper.state.has_tenant(tenant):
        raise NotFound(f"unknown tenant {tenant!r}")
    return tenant


def _api_get(wrapper: SandboxWrapper, request: Request, tenant: str, path: list[str]) -> Reply:
    state = wrapper.state
    match path:
        case ["credits", "configs"]:
            return 200, state.credit_configs(tenant)
        case ["roles"]:
            return 200, state.roles(tenant)
        case ["users", "access"]:
            limit = _int(request.query_value("limit"), DEFAULT_PAGE_SIZE, "limit")
            return 200, state.user_access_page(tenant, request.query_value("cursor"), limit)
        case ["users", user_id, "profile"]:
            return 200, state.profile(tenant, user_id)
        case ["users", user_id, "credits"]:
            return 200, state.credits(tenant, user_id)
        case ["hierarchy", entity_id]:
            return 200, state.hierarchy_node(tenant, entity_id)
    raise NotFound(f"no route GET {request.path}")


def _admin(wrapper: SandboxWrapper, request: Request, path: list[str]) -> Reply:
    """``/_admin/...``: drive the sandbox over HTTP (for demos with curl)."""
    match request.method, path:
        case "PUT", ["_down"]:
            down = request.json_object(("down",)).get("down")
            if not isinstance(down, bool):
                raise InvalidInput("down must be true or false")
            wrapper.set_down(down)
            return 200, {"down": down}
        case "POST", ["_faults"]:
            return 200, _add_fault(wrapper, request.json_object(_FAULT_FIELDS))
        case "DELETE", ["_faults"]:
            wrapper.clear_faults()
            return 200, {"faults": []}
        case "GET", [tenant]:
            return 200, wrapper.state.snapshot(tenant)
        case "PUT", [tenant]:
            wrapper.add_tenant(tenant, request.json_object() if request.body else None)
            return 200, {"tenantId": tenant}
        case "DELETE", [tenant]:
            wrapper.remove_tenant(tenant)
            return 200, {"tenantId": tenant}
        case _, [tenant, kind, *rest] if rest:
            return _admin_entity(wrapper, request, tenant, kind, rest)
    raise NotFound(f"no route {request.method} {request.path}")


def _admin_entity(
    wrapper: SandboxWrapper, request: Request, tenant: str, kind: str, rest: list[str]
) -> Reply:
    match request.method, kind, rest:
        case "PUT", "credit-configs", [op]:
            body = request.json_object(("creditCost",))
            return 200, wrapper.set_credit_cost(tenant, op, _required(body, "creditCost"))
        case "DELETE", "credit-configs", [op]:
            return 200, wrapper.delete_credit_cost(tenant, op)
        case "PUT", "roles", [role_id]:
            body = request.json_object(("permissions", "roleName", "roleId"))
            return 200, wrapper.set_role(
                tenant, role_id, _required(body, "permissions"), role_name=body.get("roleName")
            )
        case "DELETE", "roles", [role_id]:
            return 200, wrapper.delete_role(tenant, role_id)
        case "PUT", "users", [user_id]:
            body = request.json_object(("status", "roles", "profile", "userId"))
            return 200, wrapper.set_user(
                tenant, user_id, body.get("status"), body.get("roles"), body.get("profile")
            )
        case "DELETE", "users", [user_id]:
            return 200, wrapper.delete_user(tenant, user_id)
        case "POST", "users", [user_id, "credits"]:
            body = request.json_object(("amount",))
            return 200, wrapper.top_up_credits(tenant, user_id, _required(body, "amount"))
        case "PUT", "hierarchy", [entity_id]:
            node = request.json_object()
            affected = _id_list(node.pop("affectedEntityIds", None))
            return 200, wrapper.set_hierarchy(tenant, entity_id, node, affected)
        case "DELETE", "hierarchy", [entity_id]:
            body = request.json_object(("affectedEntityIds",)) if request.body else {}
            affected = _id_list(body.get("affectedEntityIds"))
            return 200, wrapper.delete_hierarchy(tenant, entity_id, affected)
    raise NotFound(f"no route {request.method} {request.path}")


_FAULT_FIELDS = ("status", "delay", "pathPrefix", "times", "drop", "after")


def _add_fault(wrapper: SandboxWrapper, body: Mapping[str, Any]) -> dict[str, Any]:
    for flag in ("drop", "after"):
        if not isinstance(body.get(flag, False), bool):
            raise InvalidInput(f"{flag} must be true or false")
    fault = Fault(
        status=body.get("status"),
        delay=body.get("delay", 0.0),
        path_prefix=body.get("pathPrefix", ""),
        times=body.get("times"),
        drop=body.get("drop", False),
        after=body.get("after", False),
    )
    wrapper.faults.add(fault)
    return {"faults": [vars(f) for f in wrapper.faults.active()]}


def _required(body: Mapping[str, Any], name: str) -> Any:
    if name not in body:
        raise InvalidInput(f"{name} is required")
    return body[name]


def _id_list(value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("affectedEntityIds must be a list of ids")
    return value


def _int(value: str | None, default: int, what: str) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{what} must be an integer") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")
