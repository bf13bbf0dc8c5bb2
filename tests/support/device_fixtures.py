"""Fixtures for the devices tests: a gateway with a registration token, dispatchers and
device agents (`run_device`) as real subprocesses on free ports, and a callback receiver."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devices.commands import CommandAnswer, send_command
from devices.models import Device
from tests.support.processes import Gateway, ServiceProcess, free_port, start_gateway, start_service

DEVICE_TOKEN = "test-device-token"

DEVICE_ENV = {
    "ZYPHER_DEVICE_TOKEN": DEVICE_TOKEN,
    "ZYPHER_QPU_SECONDS": "0.3",
    "ZYPHER_DEVICE_PING_SECONDS": "0.3",
    "ZYPHER_DEVICE_MISSED_PINGS": "2",
    "ZYPHER_DEVICE_TIMEOUT_SECONDS": "1",
    "ZYPHER_CALLBACK_BACKOFF_SECONDS": "0.2",
    "ZYPHER_IDLE_POLL_SECONDS": "0.2",
}


@pytest.fixture
def device_settings(settings: Any) -> None:
    """This process's settings match the subprocesses' (it signs commands too)."""
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    settings.ZYPHER_DEVICE_TIMEOUT_SECONDS = 2.0


@pytest.fixture
def device_env(subprocess_env: dict[str, str], device_settings: None) -> dict[str, str]:
    subprocess_env.update(DEVICE_ENV)
    return subprocess_env


@pytest.fixture
def device_gateway(device_env: dict[str, str], tmp_path: Path) -> Iterator[Gateway]:
    process, url = start_gateway(device_env, tmp_path)
    yield Gateway(process, url)
    process.stop()


class Agent:
    def __init__(self, process: ServiceProcess, device_id: str, port: int) -> None:
        self.process = process
        self.device_id = device_id
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def device(self) -> Device:
        return Device.objects.get(name=self.device_id)

    def command(self, command: str, **args: Any) -> CommandAnswer:
        return send_command(self.device(), command, args, timeout=5)

    def log(self) -> str:
        return self.process.log_text()


@pytest.fixture
def start_agent(
    device_env: dict[str, str], device_gateway: Gateway, tmp_path: Path
) -> Iterator[Callable[..., Agent]]:
    """Factory: `manage.py run_device` on a free port, registered with the gateway."""
    started: list[Agent] = []

    def start(device_id: str, size: int, device_type: str = "qpu", **env: str) -> Agent:
        port = free_port()
        command = [sys.executable, "manage.py", "run_device", "--id", device_id]
        command += ["--type", device_type, "--size", str(size), "--port", str(port)]
        command += ["--gateway", device_gateway.url]
        process = start_service(
            f"agent-{device_id}", command, {**device_env, **env}, tmp_path, "listening on"
        )
        agent = Agent(process, device_id, port)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.process.stop()


@pytest.fixture
def start_device_dispatcher(
    device_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: `run_dispatcher` with no local devices (remote and simulated ones only)."""
    started: list[ServiceProcess] = []

    def start(name: str = "remote-dispatcher", devices: int = 0, **env: str) -> ServiceProcess:
        command = [sys.executable, "manage.py", "run_dispatcher", "--devices", str(devices)]
        command += ["--name", name]
        process = start_service(name, command, {**device_env, **env}, tmp_path, "running")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class CallbackReceiver:
    """A small local HTTP server recording the POSTs it gets; `fail_first` answers 500s first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[Any] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/results"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.close()
