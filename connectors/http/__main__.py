"""``python -m connectors.http``: the HTTP connector."""

import sys

from connectors.main import main

sys.exit(main(["http", *sys.argv[1:]]))
