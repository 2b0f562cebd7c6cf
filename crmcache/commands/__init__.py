"""The CLI's subcommands; each module exposes ``register(subparsers)``."""

from types import ModuleType

from crmcache.commands import api, flower, subscribe, up

COMMANDS: tuple[ModuleType, ...] = (subscribe, api, up, flower)
