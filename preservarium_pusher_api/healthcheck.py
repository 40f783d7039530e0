"""``pusher-healthcheck``: the container HEALTHCHECK, without curl (slim images have none).

Exit 0 when ``GET HEALTHCHECK_URL`` (or the URL argument) answers 2xx within the timeout,
1 otherwise. Standard library only, so it starts fast and needs nothing installed.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

DEFAULT_URL = "http://127.0.0.1:8000/health"


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether ``url`` answers 2xx, and what was seen."""
    if not url.startswith(("http://", "https://")):
        return False, f"not an http(s) URL: {url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pusher-healthcheck [URL]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    url = args[0] if args else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    ok, seen = check(url)
    print(f"{url}: {seen}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
