"""`make run` keeps serving when the dispatcher dies (issue 12): its supervisor
(`python -m devices.supervise`, what the target runs) restarts the dispatcher with a
backoff and logs it; Ctrl-C still stops everything."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.processes import ServiceProcess, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.one_pass]


def _children(pid: int) -> dict[int, str]:
    """Child pids of `pid` and their command lines."""
    children = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            children[int(child)] = cmdline.decode(errors="replace")
    return children


def _dispatcher_pid(supervisor: ServiceProcess) -> int | None:
    for pid, cmdline in _children(supervisor.pid).items():
        if "run_dispatcher" in cmdline:
            return pid
    return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _job_succeeds(url: str, tag: str) -> bool:
    body: dict[str, Any] = {"user_id": "runner", "kind": "sleep", "input": {"tag": tag}}
    job = requests.post(url + "/api/jobs/", json=body, timeout=10).json()
    return wait_until(
        lambda: (
            requests.get(f"{url}/api/jobs/{job['id']}/", timeout=10).json()["status"] == "succeeded"
        ),
        30,
        f"job {tag} to succeed",
    )


def test_the_dispatcher_is_restarted_and_ctrl_c_stops_everything(subprocess_env, tmp_path):
    port = free_port()
    env = {**subprocess_env, "HOST": "127.0.0.1", "PORT": str(port), "WEB_WORKERS": "1"}
    supervisor = ServiceProcess(
        "supervise", [sys.executable, "-m", "devices.supervise"], env, tmp_path
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            try:
                return requests.get(url + "/api/health/", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(serving, 30, "the web server")
        first = wait_until(lambda: _dispatcher_pid(supervisor), 10, "the dispatcher")
        assert _job_succeeds(url, "before")

        os.kill(first, signal.SIGKILL)
        wait_until(lambda: "restart 1 in" in supervisor.log_text(), 10, "the restart log")
        assert serving(), "the web server stopped with the dispatcher"
        second = wait_until(
            lambda: (pid := _dispatcher_pid(supervisor)) not in (None, first) and pid,
            15,
            "a new dispatcher",
        )
        assert _job_succeeds(url, "after")

        children = list(_children(supervisor.pid))
        supervisor.signal(signal.SIGINT)  # Ctrl-C
        assert supervisor.process.wait(timeout=20) == 0
        wait_until(lambda: not any(_alive(pid) for pid in children), 10, "the children to exit")
        assert not _alive(second)
    finally:
        supervisor.stop()
