"""``crmcache check-config``: validate the configuration before any service starts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from config.settings import PLACEHOLDER_SECRET, Settings
from ops.commands._common import Exit, add_command

HELP = "validate the configuration (exit 2 naming what is wrong)"
DESCRIPTION = "Validate the configuration a deployment runs with."
EPILOG = """\
Every variable is read as every crmcache process reads it: a malformed value, or a secret that
still says change-me (.env.example's placeholders), is named and the exit code is 2. Then any
other variable still saying change-me (REDIS_PUBLISHER_PASSWORD), and what a production
deployment needs: WRAPPER_API_TOKEN, CRM_API_KEYS and FLOWER_BASIC_AUTH set.
docker-compose.yml runs it once before every other application service, so that a bad .env
stops the start with one message instead of services restarting in a loop."""

REQUIRED = {
    "WRAPPER_API_TOKEN": "the Wrapper's bearer token",
    "CRM_API_KEYS": "the HTTP API's tenant:key pairs",
    "FLOWER_BASIC_AUTH": "Flower's user:password",
}


def register(sub: Any) -> None:
    add_command(sub, "check-config", run, HELP, DESCRIPTION, EPILOG, json=False)


def missing(settings: Settings) -> list[str]:
    """The variables a production deployment needs that are not set."""
    values = {
        "WRAPPER_API_TOKEN": settings.wrapper_api_token.get_secret_value(),
        "CRM_API_KEYS": settings.api_keys.get_secret_value(),
        "FLOWER_BASIC_AUTH": (
            settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
        ),
    }
    return [name for name, value in values.items() if not value.strip()]


def placeholders(environ: Mapping[str, str]) -> list[str]:
    """Variables still saying change-me, crmcache's or not (Redis' publisher password is not a
    setting of ours, but .env.example has it)."""
    return sorted(name for name, value in environ.items() if PLACEHOLDER_SECRET in value.lower())


def run(args: argparse.Namespace, settings: Settings) -> int:
    # A malformed setting never gets here: the CLI reports it (one line, exit 2) while reading
    # the settings.
    problems = [f"{name}: still says {PLACEHOLDER_SECRET}" for name in placeholders(os.environ)]
    problems += [f"{name} is not set ({REQUIRED[name]})" for name in missing(settings)]
    if problems:
        print(f"crmcache: invalid configuration: {'; '.join(problems)}", file=sys.stderr)
        return Exit.USAGE
    print("crmcache: configuration ok")
    return Exit.OK
