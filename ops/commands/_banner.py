"""What ``crmcache up`` prints once the stack is up: where each part listens, the secrets to use,
and the exact command lines for a second terminal."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from ops.dev.devstack import StackInfo

SAMPLE_EVENT = {
    "eventType": "credit-config-changed",
    "data": {"operationCode": "crm.leads.create", "newValue": 3},
}


def _relative(path: Path) -> str:
    """`path` as typed from the working directory: relative below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command_name() -> str:
    """How to type ``crmcache`` in another terminal: plainly when PATH finds this one, else its
    path (``.venv/bin/crmcache`` from the checkout)."""
    script = Path(sys.executable).with_name("crmcache")
    found = shutil.which("crmcache")
    if found and os.path.realpath(found) == os.path.realpath(script):
        return "crmcache"
    return _relative(script)


def _parts(info: StackInfo) -> list[str]:
    lines = []
    for part in info.parts:
        where = part["url"] or ""
        lines.append(f"  {part['name']:<11} pid {part['pid']:<8} {where:<30} {part['note']}")
    return lines


def _facts(info: StackInfo, active_subscriber: str | None) -> list[str]:
    lines = []
    if info.tenants:
        ready = ", ".join(info.ready_tenants) or "none yet"
        lines.append(f"  tenants        {', '.join(info.tenants)} (ready: {ready})")
    if active_subscriber:
        lines.append(f"  subscriber     active: {active_subscriber}")
    for tenant, key in info.api_keys.items():
        lines.append(f"  API key        {tenant}: {key}   (header X-API-Key)")
    if info.api_url is None:
        lines.append("  HTTP API       not started: this version has no `crmcache api` command")
    if info.flower_url:
        lines.append(f"  Flower         {info.flower_url}  login {info.flower_auth}")
    if info.sandbox:
        lines.append(
            f"  sandbox token  {info.wrapper_token}   (Authorization: Bearer, WRAPPER_API_TOKEN)"
        )
    if info.state_file:
        lines.append(
            "  kept           keys, login and token stay the same at the next start (--new-keys)"
        )
    for name, moved in info.moved_ports.items():
        lines.append(
            f"  port moved     {name}: {moved['wanted']} is taken (another crmcache up?), "
            f"listening on {moved['port']}"
        )
    return lines


def _commands(info: StackInfo) -> list[str]:
    crmcache = command_name()
    if info.state_file:
        where = _relative(Path(info.state_file))
        lines = [f"In another terminal (commands of this checkout find the stack in {where}):"]
    else:
        lines = ["In another terminal:"]
        crmcache = f"REDIS_URL={info.redis_url} {crmcache}"
    tenant = next(iter(info.api_keys), (info.tenants or ["acme"])[0])
    lines += [
        f"  {crmcache} status --watch",
        f"  {crmcache} preload {tenant}",
        f"  {crmcache} publish {tenant} credit-configs {shlex.quote(json.dumps(SAMPLE_EVENT))}",
    ]
    if info.api_url and info.api_keys:
        lines.append(
            f"  curl -H 'X-API-Key: {info.api_keys[tenant]}' "
            f"'{info.api_url}/api/credits/validate?operation=crm.leads.create&userId=user-456'"
        )
    if info.sandbox:
        lines.append(
            f"  curl -X PUT -H 'Authorization: Bearer {info.wrapper_token}' "
            f"{info.wrapper_url}/_admin/{tenant}/credit-configs/crm.leads.create "
            """-d '{"creditCost": 3}'"""
        )
    if "/" in command_name():
        activate = _relative(Path(sys.executable).with_name("activate"))
        lines.append(f"  (or first `source {activate}` or `make shell`: then plain `crmcache ...`)")
    return lines


def banner(info: StackInfo, active_subscriber: str | None) -> str:
    lines = ["", "crmcache is up. Ctrl-C stops everything.", ""]
    lines += _parts(info)
    lines += ["", *_facts(info, active_subscriber), "", *_commands(info), ""]
    return "\n".join(lines)
