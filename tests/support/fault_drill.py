"""The fault drill's faults, shared by tests/reliability/test_fault_drill.py and bench/faults.py.

Each fault is done to real processes during a run (a web server, a dispatcher with
local devices, clients submitting over HTTP) and timed until the system recovered by
itself. PostgreSQL only: the database outage stops and starts the throwaway cluster of
tests/support/pgcluster.py (`ZYPHER_TEST_PGDATA`, `ZYPHER_TEST_PGBIN`) with `pg_ctl`.

Plain Python; the caller has Django set up on the same database as the processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import requests
from django.db import OperationalError, connection

from tests.support.processes import ServiceProcess, wait_until


@dataclass
class Recovery:
    """One fault and how long the system took to get over it (seconds)."""

    fault: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _db_retrying(query: Callable[[], Any]) -> Any:
    """Run an ORM query from the drill's own process, reconnecting after an outage."""
    try:
        return query()
    except OperationalError:
        connection.close()
        return None


def _running_on(prefix: str) -> int:
    from jobs.models import Job

    return Job.objects.filter(status="running", device__startswith=prefix).count()


def _started_since(moment: datetime, prefix: str = "") -> bool:
    from jobs.models import Job

    jobs = Job.objects.filter(started_at__gt=moment)
    if prefix:
        jobs = jobs.filter(device__startswith=prefix)
    return jobs.exists()


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_pids(dispatcher_pid: int) -> list[int]:
    """The worker processes (multiprocessing spawn children) of a dispatcher."""
    pids = []
    for task in Path(f"/proc/{dispatcher_pid}/task").glob("*"):
        children = task / "children"
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
    workers = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(pid)
    return sorted(workers)


def kill_dispatcher(
    dispatcher: ServiceProcess, start_dispatcher: Callable[[str], ServiceProcess], new_name: str
) -> tuple[ServiceProcess, Recovery]:
    """kill -9 the dispatcher process alone (its workers must die with it), start a new
    one, and time until the new one runs jobs and the dead one's jobs are requeued."""
    recovery = Recovery("kill -9 dispatcher")
    killed_name = dispatcher.name
    workers = worker_pids(dispatcher.pid)
    os.kill(dispatcher.pid, signal.SIGKILL)
    dispatcher.process.wait(timeout=10)
    killed_at, killed_wall = time.monotonic(), _now()
    orphaned = _running_on(f"{killed_name}-")
    recovery.notes.append(f"{orphaned} job(s) held by the killed dispatcher")
    # PR_SET_PDEATHSIG: no worker may outlive its dispatcher and finish a job unseen.
    wait_until(lambda: not any(_alive(pid) for pid in workers), 5, "workers to die")
    recovery.timings["workers_gone_s"] = time.monotonic() - killed_at
    replacement = start_dispatcher(new_name)
    wait_until(
        lambda: _started_since(killed_wall, f"{new_name}-"), 60, "the new dispatcher to claim"
    )
    recovery.timings["new_dispatcher_claims_s"] = time.monotonic() - killed_at
    wait_until(lambda: _running_on(f"{killed_name}-") == 0, 60, "orphaned jobs to be requeued")
    recovery.timings["orphans_requeued_s"] = time.monotonic() - killed_at
    return replacement, recovery


WORKER_EXIT = re.compile(
    r"job (\S+): worker process of device (\S+) exited with code -9; now (\w+)"
)


def _worker_exits_past(dispatcher: ServiceProcess, seen: int) -> bool:
    return len(WORKER_EXIT.findall(dispatcher.log_text())) > seen


def _worker_started_again(dispatcher: ServiceProcess, device: str) -> bool:
    return dispatcher.log_text().count(f"device {device} (") >= 2


def _job_ended(public_id: str) -> bool:
    from jobs.models import Job

    return Job.objects.get(public_id=public_id).status in ("succeeded", "failed")


def kill_worker(dispatcher: ServiceProcess, attempts: int = 5) -> Recovery:
    """kill -9 one worker process while it runs a job; time until its job is requeued
    and done and the device is replaced."""

    recovery = Recovery("kill -9 worker mid-job")
    for _ in range(attempts):
        seen = len(WORKER_EXIT.findall(dispatcher.log_text()))
        pids = worker_pids(dispatcher.pid)
        if not pids:
            time.sleep(0.5)
            continue
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            wait_until(
                partial(_worker_exits_past, dispatcher, seen),
                5,
                "the dispatcher to see its worker die",
            )
        except AssertionError:
            recovery.notes.append("the killed worker was idle; killing another")
            continue
        public_id, device, status = WORKER_EXIT.findall(dispatcher.log_text())[seen]
        recovery.timings["job_released_s"] = time.monotonic() - killed_at
        recovery.notes.append(f"job {public_id} on {device}: {status}")
        wait_until(
            partial(_worker_started_again, dispatcher, device),
            10,
            "the device's worker to be replaced",
        )
        recovery.timings["worker_replaced_s"] = time.monotonic() - killed_at
        wait_until(
            partial(_job_ended, public_id),
            60,
            "the released job to finish",
        )
        recovery.timings["released_job_done_s"] = time.monotonic() - killed_at
        return recovery
    raise AssertionError(f"no worker was caught mid-job in {attempts} tries")


def kill_agent(agent: ServiceProcess, device_name: str, timeout: float = 60) -> Recovery:
    """kill -9 a remote device agent (`manage.py run_device`) while it runs a job; time
    until the dispatcher marks it offline, until its job is requeued (off that device),
    and until the job succeeded on another device."""
    from devices.models import Device
    from jobs.models import Job

    recovery = Recovery("kill -9 device agent mid-job")
    job = wait_until(
        lambda: Job.objects.filter(status="running", device=device_name).first(),
        timeout,
        f"{device_name} to run a job",
    )
    public_id = str(job.public_id)
    wait_until(lambda: f"run job {public_id}" in agent.log_text(), 10, "the agent to take the job")
    os.kill(agent.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    agent.process.wait(timeout=10)
    finished_there = f"job {public_id} succeeded" in agent.log_text()
    recovery.notes.append(
        f"job {public_id} on {device_name}: "
        + ("had finished, unreported" if finished_there else "killed mid-run")
    )
    wait_until(
        lambda: Device.objects.filter(name=device_name, state="offline").exists(),
        timeout,
        "the dispatcher to mark the agent offline",
    )
    recovery.timings["agent_offline_s"] = time.monotonic() - killed_at

    def requeued() -> bool:
        row = Job.objects.get(public_id=public_id)
        return not (row.status == "running" and row.device == device_name)

    wait_until(requeued, timeout, "the agent's job to be requeued")
    recovery.timings["job_requeued_s"] = time.monotonic() - killed_at
    done = wait_until(
        lambda: Job.objects.filter(public_id=public_id, status="succeeded").first(),
        timeout,
        "the requeued job to succeed elsewhere",
    )
    recovery.timings["job_done_elsewhere_s"] = time.monotonic() - killed_at
    recovery.notes.append(f"rerun on {done.device}, attempt {done.attempts}")
    if done.device == device_name:
        raise AssertionError(f"job {public_id} was recorded on the killed agent {device_name}")
    return recovery


def reconcile_agent_jobs(job_ids: list[str], agent_logs: list[str]) -> list[str]:
    """Jobs run by remote agents, against the agents' own logs (`job <id> succeeded` is
    logged before the report is sent): each accepted job exists and succeeded once, on a
    device that logged it; an execution logged twice only for a job claimed twice."""
    from jobs.models import Job

    problems = []
    rows = {
        str(pid): (status, attempts, device)
        for pid, status, attempts, device in Job.objects.filter(public_id__in=job_ids).values_list(
            "public_id", "status", "attempts", "device"
        )
    }
    logged = "\n".join(agent_logs)
    for public_id in job_ids:
        if public_id not in rows:
            problems.append(f"job {public_id}: lost (accepted, not in the database)")
            continue
        status, attempts, device = rows[public_id]
        runs = logged.count(f"job {public_id} succeeded")
        if status != "succeeded":
            problems.append(f"job {public_id}: {status} on {device!r}")
        elif runs == 0:
            problems.append(f"job {public_id}: succeeded, but no agent logged it")
        elif runs > 1 and attempts < 2:
            problems.append(f"job {public_id}: ran {runs} times in one claim")
    return problems


# --- the database outage ----------------------------------------------------------------


@dataclass
class ProbeAnswer:
    at: float  # monotonic
    request: str
    status: int  # 0: no answer (connection refused, timeout)
    content_type: str
    retry_after: str
    body: str

    @property
    def clean_503(self) -> bool:
        """A 503 with Retry-After whose body says why: JSON `{"error"}` for the API."""
        if self.status != 503 or not self.retry_after.isdigit() or "Traceback" in self.body:
            return False
        if self.request.startswith(("GET /admin/", "POST /admin/")):
            return "database is unavailable" in self.body
        return self.content_type.startswith("application/json") and '"error"' in self.body


class ApiProbe(threading.Thread):
    """Requests to every kind of database-backed endpoint, in a loop, until stopped."""

    def __init__(
        self, url: str, known_job_id: str, admin_cookies: dict[str, str], name: str
    ) -> None:
        super().__init__(daemon=True)
        self.name = name
        self.url = url
        self.known_job_id = known_job_id
        self.admin_cookies = admin_cookies
        self.answers: list[ProbeAnswer] = []
        self.accepted: dict[str, str] = {}
        self.stop = threading.Event()

    def requests(self, n: int) -> list[tuple[str, str, dict[str, Any] | None, dict[str, str]]]:
        tag = f"{self.name}-{n}"
        job = {"user_id": "probe", "kind": "sleep", "input": {"tag": tag, "seconds": 0.01}}
        return [
            ("POST", "/api/jobs/", job, {"Idempotency-Key": tag}),
            ("GET", f"/api/jobs/{self.known_job_id}/", None, {}),
            ("GET", "/api/jobs/?user_id=probe", None, {}),
            ("POST", f"/api/jobs/{self.known_job_id}/cancel/", None, {}),
            ("POST", "/predict", {"input": "probe", "user_id": "probe"}, {"Async-Mode": "true"}),
            ("GET", f"/predict/{self.known_job_id}", None, {}),
            ("GET", "/admin/jobs/job/", None, {}),
        ]

    def run(self) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            for method, path, body, headers in self.requests(n):
                try:
                    cookies = self.admin_cookies if path.startswith("/admin/") else None
                    response = session.request(
                        method,
                        self.url + path,
                        json=body,
                        headers=headers,
                        cookies=cookies,
                        timeout=10,
                        allow_redirects=False,
                    )
                    answer = ProbeAnswer(
                        time.monotonic(),
                        f"{method} {path.split('?')[0]}",
                        response.status_code,
                        response.headers.get("Content-Type", ""),
                        response.headers.get("Retry-After", ""),
                        response.text[:300],
                    )
                    submitted = path == "/api/jobs/" and response.status_code in (200, 201)
                    if submitted and body is not None:
                        self.accepted[body["input"]["tag"]] = response.json()["id"]
                except requests.RequestException as exc:
                    answer = ProbeAnswer(time.monotonic(), f"{method} {path}", 0, "", "", str(exc))
                self.answers.append(answer)
            time.sleep(0.05)


def pg_ctl(*args: str) -> None:
    """pg_ctl on the test cluster, as its owner (the `postgres` user when run as root)."""
    command = [str(Path(os.environ["ZYPHER_TEST_PGBIN"]) / "pg_ctl"), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=60)


def admin_cookies(url: str, username: str, password: str) -> dict[str, str]:
    """Log in to the admin as a browser would (CSRF token, form post); its cookies."""
    session = requests.Session()
    session.get(url + "/admin/login/", timeout=10)
    response = session.post(
        url + "/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": url + "/admin/login/"},
        timeout=10,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    # A cookie without a value is not one the admin set: nothing to send back.
    cookies = session.cookies.get_dict()
    return {name: value for name, value in cookies.items() if value is not None}


def database_outage(
    url: str,
    dispatcher: ServiceProcess,
    known_job_id: str,
    cookies: dict[str, str],
    down_seconds: float = 5.0,
) -> tuple[Recovery, ApiProbe]:
    """Stop PostgreSQL for `down_seconds` under load and API probes; time the recovery of
    the API and of the dispatcher (which must not be restarted)."""
    data = Path(os.environ["ZYPHER_TEST_PGDATA"])
    recovery = Recovery(f"PostgreSQL stopped for {down_seconds:g} s")
    probe = ApiProbe(url, known_job_id, cookies, "outage-probe")
    probe.start()
    time.sleep(0.5)
    connection.close()  # the drill's own connection: reopened after the outage
    stop_begin = time.monotonic()
    pg_ctl("-D", str(data), "-m", "fast", "-w", "stop")
    down_from = time.monotonic()
    recovery.timings["stop_took_s"] = down_from - stop_begin
    time.sleep(down_seconds)
    down_until = time.monotonic()
    pg_ctl("-D", str(data), "-l", str(data.parent / "postgres.log"), "-w", "start")
    started_at, started_wall = time.monotonic(), _now()
    recovery.timings["start_took_s"] = started_at - down_until

    def api_recovered() -> bool:
        return any(
            a.at > started_at and a.request == "POST /api/jobs/" and a.status in (200, 201)
            for a in probe.answers
        )

    wait_until(api_recovered, 60, "the API to recover")
    recovery.timings["api_recovered_s"] = (
        min(
            a.at
            for a in probe.answers
            if a.at > started_at and a.request == "POST /api/jobs/" and a.status in (200, 201)
        )
        - started_at
    )
    wait_until(
        lambda: _db_retrying(lambda: _started_since(started_wall)), 60, "the dispatcher to claim"
    )
    recovery.timings["dispatcher_claims_s"] = time.monotonic() - started_at
    time.sleep(1)
    probe.stop.set()
    probe.join(timeout=15)
    during = [a for a in probe.answers if down_from <= a.at <= down_until]
    recovery.notes.append(
        f"{len(during)} API answers while down: "
        + ", ".join(
            f"{status}x{sum(1 for a in during if a.status == status)}"
            for status in sorted({a.status for a in during})
        )
    )
    recovery.notes.append(
        f"dispatcher pid {dispatcher.pid} still running: {dispatcher.process.poll() is None}"
    )
    return recovery, probe


def bad_answers(probe: ApiProbe) -> list[ProbeAnswer]:
    """Answers that are neither a normal one (< 500) nor a clean JSON 503 with Retry-After."""
    return [a for a in probe.answers if a.status >= 500 and not a.clean_503 or a.status == 0]


def _set_read_only(read_only: bool) -> None:
    """Make new sessions of the database read-only (or not) and end the current ones, so
    that every process reconnects into the new setting (as after a failover to a standby)."""
    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER DATABASE {connection.ops.quote_name(name)} "
            f"SET default_transaction_read_only = {'on' if read_only else 'off'}"
        )
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def read_only_database(
    url: str,
    dispatcher: ServiceProcess,
    known_job_id: str,
    cookies: dict[str, str],
    seconds: float = 5.0,
) -> tuple[Recovery, ApiProbe]:
    """Make the database read-only for `seconds` under load and API probes; time the
    recovery once it is writable again."""
    recovery = Recovery(f"database read-only for {seconds:g} s")
    probe = ApiProbe(url, known_job_id, cookies, "read-only-probe")
    probe.start()
    time.sleep(0.5)
    _set_read_only(True)
    read_only_from = time.monotonic()
    time.sleep(seconds)
    read_only_until = time.monotonic()
    _set_read_only(False)
    writable_at, writable_wall = time.monotonic(), _now()

    def api_recovered() -> list[float]:
        return [
            a.at - writable_at
            for a in probe.answers
            if a.at > writable_at and a.request == "POST /api/jobs/" and a.status in (200, 201)
        ]

    recovery.timings["api_recovered_s"] = min(wait_until(api_recovered, 60, "the API to recover"))
    wait_until(lambda: _started_since(writable_wall), 60, "the dispatcher to claim")
    recovery.timings["dispatcher_claims_s"] = time.monotonic() - writable_at
    time.sleep(1)
    probe.stop.set()
    probe.join(timeout=15)
    during = [a for a in probe.answers if read_only_from <= a.at <= read_only_until]
    recovery.notes.append(
        f"{len(during)} API answers while read-only: "
        + ", ".join(
            f"{status}x{sum(1 for a in during if a.status == status)}"
            for status in sorted({a.status for a in during})
        )
    )
    return recovery, probe
