"""The queue's concurrency torture, long: `make reliability`'s run of tests/support/torture.py.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.torture [--seconds 300]

On PostgreSQL (DATABASE_URL). The same processes and checks as
tests/reliability/test_queue_torture.py (submitters, an operator, dispatchers that
settle, release and drop claims; then drain and check), for `--seconds` (default
ZYPHER_TORTURE_SECONDS, else 300). Prints the summary, writes bench/results/torture.json
and exits 1 on any problem: a deadlock or other database error, a counter that drifted,
a job stranded or ended other than exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from bench.common import log, setup_django, write_results

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bench.soak import reset_tables  # noqa: E402
from tests.support.torture import TortureConfig, child_env, run_torture  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("ZYPHER_TORTURE_SECONDS", "300"))
    )
    parser.add_argument("--dispatchers", type=int, default=3)
    parser.add_argument("--submitters", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-removals",
        action="store_true",
        help="a baseline without remove_user_from_queue (to tell its faults from others)",
    )
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print("torture needs PostgreSQL: run it through `make reliability`", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0)
    reset_tables()
    database_url = os.environ["DATABASE_URL"]
    config = TortureConfig(
        seconds=options.seconds,
        log_dir=tempfile.mkdtemp(prefix="zypher-torture-"),
        env=child_env(database_url, 1.0),
        dispatchers=options.dispatchers,
        submitters=options.submitters,
        seed=options.seed,
        removals=not options.no_removals,
    )
    log(f"torture: {options.seconds:g}s, logs in {config.log_dir}")
    report = run_torture(config)
    print(report.summary())
    path = write_results("torture", {"log_dir": config.log_dir, **report.as_dict()})
    print(f"results: {path}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
