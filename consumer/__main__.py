"""``python -m consumer``: run the subscriber (the same as ``crmcache subscribe``)."""

import sys

from consumer.ingest.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
