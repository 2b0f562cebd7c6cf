"""The ``crmcache`` command line: one entry point, a subcommand per job.

Exit codes: 0 success, 1 the job failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from config.settings import ConfigError, get_settings
from crmcache.logging_config import configure_logging
from ops.commands import COMMANDS
from ops.commands._common import Exit
from ops.dev import devstate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crmcache",
        description="Keeps a multi-tenant CRM's critical and reference data close, correct "
        "and fast. Configuration comes from the environment (see the README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "up":  # up writes the state; every other command may use it
        note = devstate.use_running_stack(os.environ)
        if note:
            print(note, file=sys.stderr)
            get_settings.cache_clear()
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"crmcache: {exc}", file=sys.stderr)
        return Exit.USAGE
    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.handler(args, settings))
    except ConfigError as exc:
        print(f"crmcache: {exc}", file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.FAILED
