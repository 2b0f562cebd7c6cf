"""``python -m consumer``: run the subscriber (same as ``crmcache subscribe``)."""

import sys

from crmcache.cli import main

if __name__ == "__main__":
    sys.exit(main(["subscribe", *sys.argv[1:]]))
