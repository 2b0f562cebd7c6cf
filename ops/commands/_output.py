"""How the operator commands print: JSON for scripts, rich tables and text for people."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from crmcache.store_base import now_ms


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), flush=True)


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def age(ms: int | float | None, now: int | None = None) -> str:
    """'4.2s ago', '3m ago', ...; '-' when never."""
    if ms is None:
        return "-"
    seconds = max(((now or now_ms()) - float(ms)) / 1000, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86_400:.1f}d ago"
