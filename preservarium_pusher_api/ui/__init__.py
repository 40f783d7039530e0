"""The web dashboard (``/ui``): static files served by the API, no build step, no CDN.

``static/`` holds one HTML page, its stylesheet and plain ES modules. The page reads the
API like any client: the JSON routes and the event stream (read with ``fetch`` so that the
API key goes in a header, never in a URL). ``/ui/config.json`` tells it the key header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

STATIC_DIR: Final = Path(__file__).parent / "static"
