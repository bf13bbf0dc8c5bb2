"""Real processes for tests and benchmarks: the web server and dispatchers, with logs.

Plain Python (no pytest), so that bench/ starts servers exactly as the tests do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """A subprocess with its output in a log file, stopped politely or killed."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def kill(self) -> None:
        """kill -9 of the whole process group (the dispatcher and its workers)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # leftovers of the group, if any
        self._log.close()
        return self.process.returncode


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Gateway:
    """A running web server and its URL, with JSON helpers."""

    def __init__(self, process: ServiceProcess, url: str) -> None:
        self.process = process
        self.url = url

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else self.url + path
        return requests.get(url, timeout=30, **kwargs)


def start_service(
    name: str, command: list[str], env: dict[str, str], log_dir: Path, ready: str
) -> ServiceProcess:
    """Start a command and wait until its log says `ready` (fails if it exits first)."""
    process = ServiceProcess(name, command, env, log_dir)
    wait_until(
        lambda: ready in process.log_text() or process.process.poll() is not None,
        30,
        f"{name} to start",
    )
    if process.process.poll() is not None:
        raise RuntimeError(f"{name} exited:\n{process.log_text()}")
    return process


def start_gateway(
    env: dict[str, str], log_dir: Path, port: int | None = None
) -> tuple[ServiceProcess, str]:
    """gunicorn with the project's gunicorn.conf.py on a free loopback port; waits until it answers."""
    port = port or free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    process = ServiceProcess(
        "gunicorn", [gunicorn, "zypher.asgi", "-b", f"127.0.0.1:{port}"], env, log_dir
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{process.log_text()}")
        try:
            return requests.get(url + "/api/health/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, 30, "gunicorn to answer")
    return process, url
