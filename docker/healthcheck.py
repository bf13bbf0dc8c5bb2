"""The image's HEALTHCHECK: the web role answers GET /api/health/ with 200; the other
roles are healthy while their process runs (the runtime restarts it when it exits)."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    try:
        role = Path("/tmp/zypher-role").read_text().strip()
    except OSError:
        return 1  # the entrypoint has not started yet
    if role != "web":
        return 0
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/api/health/"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
