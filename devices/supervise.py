"""`make run`'s supervisor: the web server and the dispatcher, kept running together.

    python -m devices.supervise

starts gunicorn (gunicorn.conf.py: HOST, PORT, WEB_WORKERS) and `manage.py
run_dispatcher`. The web server keeps serving when the dispatcher dies: the dispatcher
is restarted after a capped, doubling delay (reset once it ran for a while), and each
restart is logged. Accepted jobs wait in the database meanwhile; what the dead
dispatcher held comes back when its leases run out. If gunicorn exits, everything stops.

Ctrl-C or SIGTERM: one SIGTERM to each child (the dispatcher then lets running jobs
finish for ZYPHER_SHUTDOWN_GRACE_SECONDS); a second Ctrl-C is passed on as a second
signal (the dispatcher stops at once). The children run in sessions of their own, so a
Ctrl-C reaches them once, through here, and they die with this process (parent-death
signal) even if it is killed.

Plain Python, no Django: it only starts and watches processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a dispatcher that ran this long before dying starts a fresh backoff


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervise: {message}", flush=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)


class Supervisor:
    def __init__(self, web: list[str], dispatcher: list[str]) -> None:
        self.web_command = web
        self.dispatcher_command = dispatcher
        self.signals = 0

    def on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        web = start(self.web_command)
        dispatcher: subprocess.Popen[bytes] | None = start(self.dispatcher_command)
        started = time.monotonic()
        restart_at = 0.0
        delay = FIRST_DELAY_SECONDS
        restarts = 0
        while not self.signals:
            time.sleep(0.2)
            if web.poll() is not None:
                log(f"the web server exited with status {web.returncode}; stopping")
                self.stop([dispatcher])
                return 1
            if dispatcher is not None and dispatcher.poll() is not None:
                ran = time.monotonic() - started
                if ran > STABLE_SECONDS:
                    delay = FIRST_DELAY_SECONDS
                restarts += 1
                log(
                    f"run_dispatcher exited with status {dispatcher.returncode} after "
                    f"{ran:.1f}s; restart {restarts} in {delay:.1f}s (the web server keeps serving)"
                )
                dispatcher, restart_at = None, time.monotonic() + delay
                delay = min(delay * 2, MAX_DELAY_SECONDS)
            if dispatcher is None and time.monotonic() >= restart_at:
                dispatcher, started = start(self.dispatcher_command), time.monotonic()
                log(f"run_dispatcher restarted, pid {dispatcher.pid}")
        log("stopping the web server and the dispatcher")
        self.stop([web, dispatcher])
        return 0

    def stop(self, children: list[subprocess.Popen[bytes] | None]) -> None:
        running = [child for child in children if child is not None and child.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        forwarded = 1
        while any(child.poll() is None for child in running):
            time.sleep(0.1)
            if self.signals > forwarded:  # another Ctrl-C: pass it on (stop at once)
                forwarded = self.signals
                for child in running:
                    if child.poll() is None:
                        child.send_signal(signal.SIGTERM)


def main() -> int:
    bindir = Path(sys.executable).parent
    web = [str(bindir / "gunicorn"), "zypher.asgi", "--access-logfile", "-"]
    dispatcher = [sys.executable, str(ROOT / "manage.py"), "run_dispatcher"]
    return Supervisor(web, dispatcher).run()


if __name__ == "__main__":
    sys.exit(main())
