"""``python -m preservarium_pusher_api`` serves the API (as ``pusher api``)."""

import sys

from preservarium_pusher_api.server import main

sys.exit(main())
