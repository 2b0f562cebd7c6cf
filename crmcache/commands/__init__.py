"""The CLI's subcommands; each module exposes ``register(subparsers)``."""

from types import ModuleType

from crmcache.commands import api, subscribe

COMMANDS: tuple[ModuleType, ...] = (subscribe, api)
