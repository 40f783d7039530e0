"""``python -m preservarium_pusher_api`` is ``pusher api``."""

import sys

from preservarium_pusher_api.cli import main

sys.exit(main(["api", *sys.argv[1:]]))
