"""The image and compose stack as an operator runs them, on Podman.

Builds the stand-in bases when the registry images cannot be had (tests/containers/
standins.py), the app image from the repository's Dockerfile, brings compose.yaml up on a
free port, and drives it only through the published port: two users' jobs end in fair
order, and a job whose dispatcher container is killed reruns after the restart policy
brought the dispatcher back; then, on the same stack, the dispatcher scaled to three
containers shares the pool (each claims work, every job runs once, the order stays
fair), and the `qpu` profile's two agents register with the web and run `qpu` jobs.
Everything it made goes away with the run (stack.py).

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
DISPATCHERS = 3
QPU_AGENTS = {"qpu-1": 20, "qpu-2": 20}  # compose.yaml's `qpu` profile: id -> size
STARTED = time.monotonic()


_capture: Any = None  # pytest's capture manager, set by the fixture


def log(message: str) -> None:
    # One line per step on the terminal, past pytest's capture: a cold run takes minutes.
    line = f"[container test +{time.monotonic() - STARTED:.0f}s] {message}"
    if _capture is None:
        print(line, flush=True)
        return
    with _capture.global_and_fixture_disabled():
        print(line, file=sys.stderr, flush=True)


@dataclass
class RunningStack:
    stack: podman.Stack
    url: str
    device_token: str
    admin_password: str

    def post(self, body: Any, path: str = "/api/jobs/", **kwargs: Any) -> Any:
        response = requests.post(f"{self.url}{path}", json=body, timeout=30, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/jobs/{job_id}/", timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def jobs_when_ended(self, ids: list[str]) -> list[dict[str, Any]] | None:
        jobs = [self.job(job_id) for job_id in ids]
        done = all(job["status"] in {"succeeded", "failed", "cancelled"} for job in jobs)
        return jobs if done else None

    def devices(self, device_type: str) -> list[dict[str, Any]]:
        # As the agents register: with the registration token, not open mode's listing.
        response = requests.get(
            f"{self.url}/api/devices/",
            params={"type": device_type},
            headers={"X-Zypher-Device-Token": self.device_token},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return list(response.json())

    def admin_headers(self) -> dict[str, str]:
        # The admin `migrate` made from ZYPHER_ADMIN_PASSWORD: commands need a registrar.
        response = requests.post(
            f"{self.url}/api/token/",
            data={"username": "admin", "password": self.admin_password},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Token {response.json()['token']}"}


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
    device_token = secrets.token_urlsafe(24)
    admin_password = secrets.token_urlsafe(16)
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
            "ZYPHER_DEVICE_TOKEN": device_token,
            "ZYPHER_ADMIN_PASSWORD": admin_password,
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
        # The qpu profile's agents start with the web (they retry registering until it
        # answers), so their start-up overlaps the first test's jobs.
        log("migrations done; starting web, dispatcher and the qpu profile's agents")
        stack.compose_run(*podman.profile_up("qpu", "web", "dispatcher", *QPU_AGENTS))
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
        yield RunningStack(stack, url, device_token, admin_password)
    finally:
        log("compose down, removing containers, networks, volumes and the app image")
        try:
            # The profile and --remove-orphans reach the agents and the scaled dispatchers.
            stack.compose_run(*podman.DOWN_ALL, "-v", "-t", "5", timeout=180)
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
    ended = _wait_for(
        lambda: running_stack.jobs_when_ended(ids),
        20 * JOB_SECONDS + 60,
        "all jobs to end",
        running_stack,
    )
    by_id = {job["id"]: job for job in ended}

    rerun = by_id[first["id"]]
    assert rerun["status"] == "succeeded", rerun
    assert rerun["result"] == {"x": 100, "y": 10000}
    assert rerun["attempts"] >= 2, rerun  # claimed before the kill and again after it

    others = [by_id[job["id"]] for job in alice + bob]
    assert all(job["status"] == "succeeded" for job in others), others
    assert_fair_start_order(others, {job["id"] for job in alice})


def assert_fair_start_order(jobs: list[dict[str, Any]], alices: set[str]) -> None:
    """Alice queued three jobs, then bob three, while every device was busy."""
    order = [
        "alice" if job["id"] in alices else "bob"
        for job in sorted(jobs, key=lambda job: job["started_at"])
    ]
    log(f"start order: {' '.join(order)}")
    # Start-time fair queueing with equal weights and equal jobs: neither user is ever
    # more than two jobs ahead (C_max/w_a + C_max/w_b); FIFO would put alice three ahead.
    for end in range(1, len(order) + 1):
        prefix = order[:end]
        assert abs(prefix.count("alice") - prefix.count("bob")) <= 2, order


def test_three_dispatcher_containers_share_the_pool_each_job_runs_once_in_fair_order(
    running_stack: RunningStack,
) -> None:
    stack = running_stack.stack
    log(f"scaling the dispatcher to {DISPATCHERS} containers")
    stack.compose_run(*podman.scale_up("dispatcher", DISPATCHERS))
    dispatchers = stack.containers("dispatcher")
    assert len(dispatchers) == DISPATCHERS, [c["Names"] for c in dispatchers]
    # A dispatcher is named <hostname>-<pid> and so are its devices (<name>-cpu-0): the
    # container's hostname says which container ran a job.
    hostnames = {
        str(stack.inspect(str(c["Id"]))["Config"]["Hostname"])  # type: ignore[index]
        for c in dispatchers
    }
    assert len(hostnames) == DISPATCHERS, hostnames

    def container_of(device: str) -> str | None:
        return next((name for name in hostnames if device.startswith(f"{name}-")), None)

    def ready_cpu_devices() -> bool:
        ready = {d["id"] for d in running_stack.devices("cpu") if d["state"] == "ready"}
        return {container_of(device) for device in ready} >= hostnames

    _wait_for(ready_cpu_devices, 90, "three dispatchers' devices to be ready", running_stack)
    log("three dispatchers up; carol takes all three devices, then alice and bob queue")

    # One device per dispatcher: carol's three jobs running at once are one per container.
    carol = running_stack.post([{"user_id": "carol", "input": 200 + i} for i in range(3)])

    def all_running() -> bool:
        return all(running_stack.job(job["id"])["status"] == "running" for job in carol)

    _wait_for(all_running, 60, "carol's three jobs to run at once", running_stack, every=0.2)
    # Theirs are `noop` jobs: the order is the claims' order, and three CPU-bound jobs at
    # a time on two cores would only slow the run down.
    alice = running_stack.post([{"user_id": "alice", "kind": "noop", "input": i} for i in range(3)])
    bob = running_stack.post([{"user_id": "bob", "kind": "noop", "input": i} for i in range(3)])
    ids = [job["id"] for job in carol + alice + bob]
    ended = _wait_for(
        lambda: running_stack.jobs_when_ended(ids), 12 * JOB_SECONDS + 60, "the jobs", running_stack
    )

    for job in ended:
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, job  # claimed once: no dispatcher took another's job
        squared = {"x": job["input"], "y": job["input"] ** 2}
        assert job["result"] == (job["input"] if job["kind"] == "noop" else squared), job
    ran_by = {container_of(str(job["device"])) for job in ended}
    assert ran_by == hostnames, (ran_by, hostnames)
    assert_fair_start_order(ended[3:], {job["id"] for job in alice})


def test_the_qpu_profile_runs_two_agents_that_register_and_run_qpu_jobs(
    running_stack: RunningStack,
) -> None:
    def registered() -> dict[str, dict[str, Any]] | None:
        devices = {d["id"]: d for d in running_stack.devices("qpu")}
        return devices if set(devices) == set(QPU_AGENTS) else None

    devices = _wait_for(registered, 90, "both agents to register", running_stack)
    log("both agents registered; starting them")
    for name, size in QPU_AGENTS.items():
        assert devices[name]["kind"] == "remote" and devices[name]["size"] == size, devices
        assert devices[name]["url"] == f"http://{name}:9001", devices[name]

    # An agent starts unready (the published state diagram): an operator starts it.
    admin = running_stack.admin_headers()
    for name in QPU_AGENTS:
        response = requests.post(
            f"{running_stack.url}/api/devices/{name}/commands/",
            json={"command": "start"},
            headers=admin,
            timeout=30,
        )
        assert response.status_code == 200, response.text

    def both_ready() -> bool:
        return all(d["state"] == "ready" for d in running_stack.devices("qpu"))

    _wait_for(both_ready, 30, "both agents to be ready", running_stack)
    log("agents registered and ready; two users' qpu programs")
    programs = [
        running_stack.post(
            {
                "user_id": user,
                "device_type": "qpu",
                "jobs": [
                    {"instructions": ["h 0", "cx 0 1", "measure"], "shots": 100 + i, "size": 2}
                    for i in range(2)
                ],
            },
            path="/api/programs/",
        )
        for user in ("dave", "erin")
    ]
    ids = [job_id for program in programs for job_id in program["job_ids"]]
    ended = _wait_for(lambda: running_stack.jobs_when_ended(ids), 90, "the qpu jobs", running_stack)
    for job in ended:
        assert job["status"] == "succeeded", job
        assert job["device"] in QPU_AGENTS, job
        counts = job["result"]["counts"]
        assert sum(counts.values()) == job["input"]["shots"], job
        assert all(len(bits) == QPU_AGENTS[job["device"]] for bits in counts), job
    # Both were ready and idle when four jobs queued: the dispatcher gave each one work.
    assert {job["device"] for job in ended} == set(QPU_AGENTS), ended
