"""The queue under concurrency torture: many processes submit, cancel, remove users,
claim, finish, release and drop claims at once; afterwards nothing is stranded, nothing
drifted, every job ended exactly once and no process saw a deadlock.

tests/support/torture.py has the processes and the checks. 15 s of load here, plus the
processes' start-up (ZYPHER_TORTURE_SECONDS to change it); bench/torture.py is the long
run of `make reliability`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.torture import TortureConfig, child_env, run_torture

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SECONDS = float(os.environ.get("ZYPHER_TORTURE_SECONDS", "15"))
LEASE_SECONDS = 1.0


def test_concurrent_queue_changes_keep_every_invariant(
    subprocess_env: dict[str, str], tmp_path: Path, settings
) -> None:
    settings.ZYPHER_LEASE_SECONDS = LEASE_SECONDS
    config = TortureConfig(
        seconds=SECONDS,
        log_dir=str(tmp_path / "torture"),
        env=child_env(subprocess_env["DATABASE_URL"], LEASE_SECONDS),
        lease_seconds=LEASE_SECONDS,
    )
    report = run_torture(config)
    print(report.summary())

    # The run really exercised every path, so that a clean result means something.
    for did in (
        "submits",
        "removals",
        "ended by finish",
        "ended by cancel",
        "claimed",
        "abandoned",
        "reaped_queued",
    ):
        assert report.counts[did] > 0, f"the run did no {did}: {report.summary()}"
    assert report.deadlocks == 0, report.summary()
    assert report.problems == [], report.summary()
