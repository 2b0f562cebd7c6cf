"""The CLI's subcommands; each module exposes ``register(subparsers)``."""

from types import ModuleType

from crmcache.commands import subscribe

COMMANDS: tuple[ModuleType, ...] = (subscribe,)
