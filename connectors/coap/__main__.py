"""``python -m connectors.coap``: the CoAP connector."""

import sys

from connectors.main import main

sys.exit(main(["coap", *sys.argv[1:]]))
