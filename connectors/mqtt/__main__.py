"""``python -m connectors.mqtt``: the MQTT connector."""

import sys

from connectors.main import main

sys.exit(main(["mqtt", *sys.argv[1:]]))
