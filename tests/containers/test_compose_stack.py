"""The image and compose stack as an operator runs them, on Podman.

Builds the stand-in bases when the registry images cannot be had (tests/containers/
standins.py), the app image from the repository's Dockerfile, brings compose.yaml up on a
free port, and drives it only through the published port: two users' jobs end in fair
order, and a job whose dispatcher container is killed reruns after the restart policy
brought the dispatcher back. Everything it made goes away with the run (stack.py).

Runs in the SQLite pass of `make test` only (the stack brings its own PostgreSQL); skips
with the reason when Podman cannot run here, unless ZYPHER_REQUIRE_CONTAINER=1 (CI).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support.processes import free_port, wait_until

from . import stack as podman
from .standins import ensure_standins

pytestmark = [pytest.mark.container]

REQUIRED = os.environ.get("ZYPHER_REQUIRE_CONTAINER") == "1"
JOB_SECONDS = 4  # long enough to kill a dispatcher mid-job, short enough for ~40 s of jobs


_capture: Any = None  # pytest's capture manager, set by the fixture


def log(message: str) -> None:
    # One line per step on the terminal, past pytest's capture: a cold run takes minutes.
    if _capture is None:
        print(f"[container test] {message}", flush=True)
        return
    with _capture.global_and_fixture_disabled():
        print(f"[container test] {message}", file=sys.stderr, flush=True)


@dataclass
class RunningStack:
    stack: podman.Stack
    url: str

    def post(self, body: Any) -> Any:
        response = requests.post(f"{self.url}/api/jobs/", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/jobs/{job_id}/", timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"ZYPHER_REQUIRE_CONTAINER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def running_stack(pytestconfig: pytest.Config) -> Iterator[RunningStack]:
    global _capture
    _capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("runs in the SQLite pass of make test: the stack brings its own PostgreSQL")
    try:
        compose = podman.ensure_tools(log)
    except podman.Unavailable as reason:
        _unavailable(str(reason))
    podman.remove_dead_runs(log)
    project = f"{podman.PROJECT_PREFIX}{os.getpid()}"
    image = f"localhost/zypher-test:{project}"
    watcher = podman.start_watcher(project, image)
    port = free_port()
    stack = podman.Stack(
        compose,
        project,
        {
            "PORT": str(port),
            "ZYPHER_IMAGE": image,
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "ZYPHER_OPEN_MODE": "1",
            "ZYPHER_LIMITED_F_SECONDS": str(JOB_SECONDS),
            "ZYPHER_LEASE_SECONDS": "3",
            "ZYPHER_SHUTDOWN_GRACE_SECONDS": "2",
            "WEB_WORKERS": "1",
        },
    )
    try:
        ensure_standins(podman.PODMAN, log, podman.runner)
        started = time.monotonic()
        podman.build_app_image(image, project, log)
        log(f"app image built in {time.monotonic() - started:.0f} s; compose up on port {port}")
        # In stages, as compose.yaml orders them: Podman 4.3 cannot start a container whose
        # `--requires` chain holds an exited one-shot (it tries to start `migrate` again),
        # so each stage starts without dependencies once the previous one is done.
        stack.compose_run("up", "-d", "--no-deps", "db", "migrate")
        (migrate,) = stack.containers("migrate")
        exit_code = podman.run([*podman.PODMAN, "wait", str(migrate["Id"])], timeout=180)
        if exit_code.strip() != "0":
            log(stack.logs())
            raise AssertionError(f"migrate exited with {exit_code.strip()}")
        log("migrations done; starting web and dispatcher")
        stack.compose_run("up", "-d", "--no-deps", "web", "dispatcher")
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return requests.get(f"{url}/api/health/", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(healthy, 120, "the web container to answer /api/health/")
        except AssertionError:
            log(stack.logs())
            raise
        (web,) = stack.containers("web")

        def image_healthcheck_passes() -> bool:
            # The image's own HEALTHCHECK, run on demand (Podman's timers need systemd).
            check = [*podman.PODMAN, "healthcheck", "run", str(web["Id"])]
            return subprocess.run(check, capture_output=True).returncode == 0

        wait_until(image_healthcheck_passes, 60, "the image's HEALTHCHECK to pass", interval=2)
        log("stack up and healthy (the web container's HEALTHCHECK passes)")
        yield RunningStack(stack, url)
    finally:
        log("compose down, removing containers, networks, volumes and the app image")
        try:
            stack.compose_run("down", "-v", "-t", "5", timeout=120)
        except RuntimeError as error:
            log(f"compose down failed, removing by label: {error}")
        podman.remove_project(project, image)
        os.close(watcher)
        log("clean")


def _wait_for(
    predicate: Callable[[], Any], seconds: float, what: str, stack: RunningStack, every: float = 0.5
) -> Any:
    try:
        return wait_until(predicate, seconds, what, interval=every)
    except AssertionError:
        log(stack.stack.logs())
        raise


def test_jobs_end_in_fair_order_and_a_killed_dispatcher_container_reruns_its_job(
    running_stack: RunningStack,
) -> None:
    first = running_stack.post({"user_id": "carol", "input": 100})
    _wait_for(
        lambda: running_stack.job(first["id"])["status"] == "running",
        90,
        "carol's job to start",
        running_stack,
        every=0.2,
    )
    # While carol's job holds the only device, alice queues three jobs, then bob three:
    # first come, first served would run alice's three before any of bob's.
    alice = running_stack.post([{"user_id": "alice", "input": i} for i in range(3)])
    bob = running_stack.post([{"user_id": "bob", "input": i} for i in range(3)])

    (dispatcher,) = running_stack.stack.containers("dispatcher")
    name = str(dispatcher["Names"][0])  # type: ignore[index]
    pid = int(running_stack.stack.inspect(name)["State"]["Pid"])  # type: ignore[index]
    assert running_stack.job(first["id"])["status"] == "running"
    log(f"killing the dispatcher container {name} (pid {pid}) mid-job")
    os.kill(pid, signal.SIGKILL)

    _wait_for(
        lambda: int(running_stack.stack.inspect(name).get("RestartCount", 0)) >= 1,  # type: ignore[call-overload]
        60,
        "the restart policy to bring the dispatcher back",
        running_stack,
    )
    log("dispatcher restarted; waiting for the seven jobs")
    ids = [first["id"]] + [job["id"] for job in alice + bob]

    def all_ended() -> list[dict[str, Any]] | None:
        jobs = [running_stack.job(job_id) for job_id in ids]
        done = all(job["status"] in {"succeeded", "failed", "cancelled"} for job in jobs)
        return jobs if done else None

    ended = _wait_for(all_ended, 20 * JOB_SECONDS + 60, "all jobs to end", running_stack)
    by_id = {job["id"]: job for job in ended}

    rerun = by_id[first["id"]]
    assert rerun["status"] == "succeeded", rerun
    assert rerun["result"] == {"x": 100, "y": 10000}
    assert rerun["attempts"] >= 2, rerun  # claimed before the kill and again after it

    others = sorted((by_id[job["id"]] for job in alice + bob), key=lambda job: job["started_at"])
    assert all(job["status"] == "succeeded" for job in others), others
    order = ["alice" if job["id"] in {a["id"] for a in alice} else "bob" for job in others]
    log(f"start order: {' '.join(order)}")
    # Start-time fair queueing with equal weights and equal jobs: neither user is ever
    # more than two jobs ahead (C_max/w_a + C_max/w_b); FIFO would put alice three ahead.
    for end in range(1, len(order) + 1):
        prefix = order[:end]
        assert abs(prefix.count("alice") - prefix.count("bob")) <= 2, order
