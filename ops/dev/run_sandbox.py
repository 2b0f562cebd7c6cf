"""Run the development sandbox Wrapper with crmcache's logging (``crmcache up`` starts this).

The sandbox is a development tool, not product code: see ``python -m sandbox --help``.
Redis URL and token come from the environment (REDIS_URL, WRAPPER_API_TOKEN).
"""

from __future__ import annotations

import sys

from config.settings import settings_or_exit
from crmcache.logging_config import configure_logging


def main(argv: list[str]) -> int:
    settings = settings_or_exit("sandbox")  # exit 2 naming a bad variable
    configure_logging(settings.log_level, settings.log_format)
    from sandbox.__main__ import main as sandbox_main

    return sandbox_main(["--redis-url", settings.cache_url, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
