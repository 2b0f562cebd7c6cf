"""``python -m crmcache``: the same as the ``crmcache`` command."""

import sys

from crmcache.cli import main

if __name__ == "__main__":
    sys.exit(main())
