"""Wait until the database answers (ZYPHER_DB_WAIT_SECONDS, default 60), then exit 0.

Compose orders `migrate` after a healthy `db`, but not every runtime honours health
conditions (Podman before 4.6 ignores them) and a database restarts on its own schedule;
so each role that needs the database waits for it here. Exits 1 with the last error.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, "/app")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zypher.settings")


def main() -> int:
    import django
    from django.db import connection
    from django.db.utils import OperationalError

    django.setup()
    deadline = time.monotonic() + float(os.environ.get("ZYPHER_DB_WAIT_SECONDS", "60"))
    while True:
        try:
            connection.ensure_connection()
        except OperationalError as error:
            if time.monotonic() > deadline:
                print(f"database not reachable: {error}", file=sys.stderr)
                return 1
            time.sleep(1)
        else:
            connection.close()
            return 0


if __name__ == "__main__":
    sys.exit(main())
