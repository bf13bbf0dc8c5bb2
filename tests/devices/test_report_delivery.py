# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""Remote reports are delivered or the job is requeued (at least once, never wedged).

An agent resends a finished job's report until the gateway accepts it or refuses it for
good; the gateway keeps the lease of a job whose result is unreported only for
ZYPHER_DEVICE_UNREPORTED_SECONDS after it ended, then requeues it and frees the device. A
report that arrives after that is refused by its fencing token."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests

from devices.models import Device
from jobs.models import Job
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    Agent,
    device_env,
    device_gateway,
    device_settings,
    start_agent,
    start_device_dispatcher,
)
from tests.support.processes import (
    Gateway,
    ServiceProcess,
    free_port,
    start_gateway,
    start_service,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.one_pass]

# Before issue 12 an agent gave a job's report the retry window of a state report (60 s
# then) and kept the job unreported for ever; an outage longer than that window is the case
# that wedged. The window is configured short here (ZYPHER_DEVICE_REPORT_RETRY_SECONDS) and
# the outage outlasts it twice over: a 62 s outage against the default proved no more.
REPORT_RETRY_SECONDS = 3
OUTAGE_SECONDS = 2 * REPORT_RETRY_SECONDS


def submit_program(gateway: Gateway, sizes: list[int]) -> list[str]:
    body = {
        "user_id": "alice",
        "device_type": "qpu",
        "jobs": [{"instructions": ["h 0", "measure"], "shots": 50, "size": s} for s in sizes],
    }
    response = gateway.post("/api/programs/", body)
    assert response.status_code == 201, response.text
    return response.json()["job_ids"]


def device_is_free(name: str) -> bool:
    device = Device.objects.get(name=name)
    return device.state == "ready" and device.current_job_id is None


@pytest.fixture
def start_gateway_again(
    device_env: dict[str, str], device_gateway: Gateway, tmp_path: Path
) -> Iterator[Callable[[], Gateway]]:
    """Start the gateway again on the port of the stopped `device_gateway`."""
    started: list[ServiceProcess] = []

    def start() -> Gateway:
        log_dir = tmp_path / f"gateway-again-{len(started)}"
        log_dir.mkdir()
        port = urlparse(device_gateway.url).port
        process, url = start_gateway(device_env, log_dir, port=port)
        started.append(process)
        return Gateway(process, url)

    yield start
    for process in started:
        process.stop()


def test_a_result_that_ends_while_the_gateway_is_down_is_delivered_once_it_is_back(
    device_gateway, start_agent, start_device_dispatcher, start_gateway_again
):
    agent = start_agent(
        "qpu-a",
        size=4,
        ZYPHER_QPU_SECONDS="2",
        ZYPHER_DEVICE_REPORT_RETRY_SECONDS=str(REPORT_RETRY_SECONDS),
    )
    agent.command("start")
    dispatcher = start_device_dispatcher()
    [job_id] = submit_program(device_gateway, [4])
    wait_until(lambda: Job.objects.filter(public_id=job_id, status="running").exists(), 20, "run")
    device_gateway.process.stop()
    wait_until(lambda: f"job {job_id} succeeded" in agent.log(), 20, "the job to end on the agent")
    time.sleep(OUTAGE_SECONDS)
    # Meanwhile the dispatcher kept the lease: the agent holds the result.
    job = Job.objects.get(public_id=job_id)
    assert job.status == "running" and job.attempts == 1, (job.status, job.error)
    assert agent.command("status").body["result"]["unreported"] == [job_id]
    start_gateway_again()
    wait_until(lambda: Job.objects.get(public_id=job_id).status == "succeeded", 40, "delivery")
    job = Job.objects.get(public_id=job_id)
    assert job.attempts == 1 and job.device == "qpu-a" and job.result is not None
    assert sum(job.result["counts"].values()) == 50
    assert agent.log().count(f"run job {job_id}") == 1
    wait_until(lambda: device_is_free("qpu-a"), 10, "the device to be free")
    # The gateway frees the device before its answer reaches the agent: wait for the agent.
    wait_until(lambda: agent.command("status").body["result"]["unreported"] == [], 10, "forgotten")
    assert agent.process.process.poll() is None and dispatcher.process.poll() is None


class RefusingProxy:
    """The gateway behind a switch: while `refusing`, reports are answered 503."""

    def __init__(self, upstream: str) -> None:
        self.refusing = False
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if proxy.refusing and "/reports/" in self.path:
                    proxy.refused += 1
                    self.answer(503, b'{"ok": false, "error": "gateway overloaded"}')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream_answer = requests.request(
                    self.command, upstream + self.path, data=body, headers=headers, timeout=30
                )
                self.answer(upstream_answer.status_code, upstream_answer.content)

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def refusing_proxy(device_gateway: Gateway) -> Iterator[RefusingProxy]:
    proxy = RefusingProxy(device_gateway.url)
    yield proxy
    proxy.close()


@pytest.fixture
def start_agent_behind(
    device_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Agent]]:
    """Factory: `run_device` reporting to the gateway at a given URL (the proxy)."""
    started: list[Agent] = []

    def start(gateway_url: str, device_id: str, size: int) -> Agent:
        port = free_port()
        command = [sys.executable, "manage.py", "run_device", "--id", device_id]
        command += ["--type", "qpu", "--size", str(size), "--port", str(port)]
        command += ["--gateway", gateway_url]
        process = start_service(f"agent-{device_id}", command, device_env, tmp_path, "listening on")
        agent = Agent(process, device_id, port)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.process.stop()


def test_a_result_refused_for_longer_than_the_bound_is_requeued_and_runs_again(
    device_gateway, refusing_proxy, start_agent_behind, start_device_dispatcher
):
    agent = start_agent_behind(refusing_proxy.url, "qpu-b", size=4)
    agent.command("start")
    wait_until(lambda: device_is_free("qpu-b"), 10, "the device to be ready")
    refusing_proxy.refusing = True
    dispatcher = start_device_dispatcher(ZYPHER_DEVICE_UNREPORTED_SECONDS="2")
    [job_id] = submit_program(device_gateway, [4])

    def first_claim_ended() -> bool:
        job = Job.objects.get(public_id=job_id)
        return not (job.status == "running" and job.attempts == 1)

    wait_until(lambda: f"job {job_id} succeeded" in agent.log(), 20, "the first run to end")
    wait_until(first_claim_ended, 30, "the gateway to give up on the unreported result")
    assert refusing_proxy.refused > 0
    refusing_proxy.refusing = False
    wait_until(lambda: Job.objects.get(public_id=job_id).status == "succeeded", 30, "the rerun")
    job = Job.objects.get(public_id=job_id)
    assert job.attempts >= 2 and job.result is not None
    assert sum(job.result["counts"].values()) == 50
    # The first run's report, delivered late, was refused by its fencing token and dropped.
    wait_until(lambda: agent.command("status").body["result"]["unreported"] == [], 30, "drop")
    assert f"job {job_id} (token 1) refused for good (409" in agent.log()
    wait_until(lambda: device_is_free("qpu-b"), 10, "the device to be free")
    assert not Job.objects.filter(status__in=["queued", "running"]).exists()
    assert agent.process.process.poll() is None and dispatcher.process.poll() is None
