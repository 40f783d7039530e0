"""``python -m pusher_cli`` is the ``pusher`` command."""

import sys

from pusher_cli.main import main

sys.exit(main())
