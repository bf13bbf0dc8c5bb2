"""Processes started by tests die with the test run, even a run killed with kill -9.

A pytest subprocess runs a tiny test that starts real things through the suite's fixtures
(gunicorn and its workers, `run_dispatcher` and its worker processes, a device agent),
then sleeps. Every process of that run carries a unique environment marker. The run is
killed with SIGKILL; within a few seconds no process with the marker may be left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.support.processes import ROOT, popen_tied, untie, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.one_pass]

MARKER = "ZYPHER_TEST_RUN_MARKER"

SLEEPER = textwrap.dedent(
    '''
    # ruff: noqa
    """Started by test_processes_die_with_run: real processes, then a long sleep."""
    import os
    import time
    from pathlib import Path

    from tests.conftest import gateway, start_dispatcher, subprocess_env, test_handlers
    from tests.support.device_fixtures import (
        device_env,
        device_gateway,
        device_settings,
        start_agent,
    )


    def test_sleep_among_real_processes(gateway, start_dispatcher, start_agent):
        start_dispatcher(devices=2)
        start_agent("qpu-sleeper", size=4)
        Path(os.environ["ZYPHER_SLEEPER_READY"]).write_text("ready")
        time.sleep(600)
    '''
)


def marked_pids(marker: str) -> set[int]:
    """Live processes whose environment holds `marker` (zombies have an empty environ)."""
    needle = f"{MARKER}={marker}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
    return found


def test_a_test_run_killed_with_sigkill_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    test_file = tmp_path / "test_sleeper.py"
    test_file.write_text(SLEEPER)
    ready = tmp_path / "ready"
    env = {**os.environ, MARKER: marker, "ZYPHER_SLEEPER_READY": str(ready)}
    env.pop("DATABASE_URL", None)  # SQLite: its test database is named per process
    env.pop("PYTEST_CURRENT_TEST", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), str(test_file)]
    with open(tmp_path / "run.log", "wb") as log:
        # Tied to this run in turn: if this run is killed, the inner one goes too.
        run = popen_tied(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: ready.exists() or run.poll() is not None, 120, "the sleeper's processes")
        assert run.poll() is None, (tmp_path / "run.log").read_text()
        started = marked_pids(marker) - {run.pid}
        # gunicorn + 2 workers, a dispatcher + 2 workers, a second gunicorn + 2, an agent.
        print(f"{len(started)} processes under the killed run")
        assert len(started) >= 8, started

        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        wait_until(lambda: not marked_pids(marker), 5, "every process of the killed run to end")
    finally:
        for pid in marked_pids(marker):  # a failing run must not leak what it found
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.wait()
        untie(run)
