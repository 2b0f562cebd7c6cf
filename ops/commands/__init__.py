"""The CLI's subcommands; each module exposes ``register(subparsers)``."""

from types import ModuleType

from ops.commands import (
    api,
    check_config,
    dlq,
    flower,
    inspect_tenant,
    preload,
    publish,
    status,
    subscribe,
    up,
)

COMMANDS: tuple[ModuleType, ...] = (
    subscribe,
    api,
    up,
    status,
    preload,
    dlq,
    publish,
    inspect_tenant,
    flower,
    check_config,
)
