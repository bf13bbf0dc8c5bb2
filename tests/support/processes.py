"""Real processes for tests and benchmarks: the web server and dispatchers, with logs.

Plain Python (no pytest), so that bench/ starts servers exactly as the tests do.

Everything started here dies with the process that started it, however that one ends
(a finished run, Ctrl-C, kill -9 of pytest); three layers, since none covers all cases:

* each service runs in a process group of its own (`start_new_session`), so one
  `killpg` reaches its children too (gunicorn's workers, the dispatcher's workers);
* the direct child gets the parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`):
  SIGKILL the moment its parent dies. The kernel sends it when the *thread* that forked
  dies, so it is set only when forking from the main thread (fixtures run there);
* a small reaper process, started on first use in a session of its own, holds the read
  end of a pipe from this process and a list of the live groups; when the pipe closes
  (this process ended, even by SIGKILL) it kills every group still listed. A normal
  exit also stops the groups at once (`stop_all`, called by an atexit hook and by the
  suite's session finalizer).

Processes forked (not exec'd) from this one inherit the pipe and so delay the reaper
until they exit too.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
except (OSError, AttributeError):  # not Linux: the reaper alone covers
    _prctl = None

# Run with `python -c` by the reaper process: no imports of ours, so it starts fast.
_REAPER_SOURCE = """
import os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups, pending = set(), b""
while True:
    chunk = os.read(0, 4096)
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _GroupReaper:
    """The reaper process of this process, started on first use (one per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner_pid = 0
        self._write_end: int | None = None

    def _pipe(self) -> int:
        if self._write_end is None or self._owner_pid != os.getpid():
            read_end, write_end = os.pipe()  # not inheritable: no exec'd child holds it
            subprocess.Popen(
                [sys.executable, "-c", _REAPER_SOURCE],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outlives us, untouched by our signals
            )
            os.close(read_end)
            self._write_end, self._owner_pid = write_end, os.getpid()
        return self._write_end

    def _send(self, line: str) -> None:
        with self._lock:
            os.write(self._pipe(), line.encode())

    def track(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")


_reaper = _GroupReaper()
_live: set[ServiceProcess] = set()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def set_parent_death_signal() -> None:  # in the child, between fork and exec
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)

    return set_parent_death_signal


def popen_tied(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` in a new process group that dies with this process.

    Call `untie(process)` once the group is known to be gone.
    """
    preexec = None
    if _prctl is not None and threading.current_thread() is threading.main_thread():
        preexec = _die_with_parent(os.getpid())
    process = subprocess.Popen(command, start_new_session=True, preexec_fn=preexec, **kwargs)
    _reaper.track(process.pid)
    return process


def untie(process: subprocess.Popen[bytes]) -> None:
    """Take a stopped group off the reaper's list (its id may be reused later)."""
    _reaper.forget(process.pid)


def stop_all() -> None:
    """Kill every service still running (the session finalizer and atexit call this)."""
    for service in list(_live):
        service.kill()
        service.close()


atexit.register(stop_all)


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
        self.process = popen_tied(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        _live.add(self)

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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group may outlive its leader
        self.process.wait(timeout=10)

    def close(self) -> None:
        """The group is gone: forget it and close the log."""
        if self in _live:
            _live.discard(self)
            untie(self.process)
        self._log.close()

    def stop(self, timeout: float = 20) -> int | None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()  # the leader if it did not stop, and leftovers of the group
        self.close()
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
