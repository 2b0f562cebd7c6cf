"""JSON views of dataclasses with camelCase keys, the spelling of the HTTP API and the CLI."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def camel(name: str) -> str:
    """``snapshot_seq`` -> ``snapshotSeq``."""
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def camel_fields(instance: Any, *names: str) -> dict[str, Any]:
    """The dataclass ``instance``'s fields ``names`` (all of them, in order, when none is named)
    under camelCase keys; the values as they are (not copied)."""
    chosen = names or tuple(f.name for f in fields(instance))
    return {camel(name): getattr(instance, name) for name in chosen}
