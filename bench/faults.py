"""Fault drill: faults under load, each timed until the system recovered by itself.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.faults [--kills 5]

Needs the throwaway cluster of tests/support/pgcluster.py (`make bench`), since it stops and
starts PostgreSQL. While clients submit a steady trickle of jobs over HTTP to the real
server and a dispatcher with four local devices runs them: kill -9 the dispatcher
(`--kills` times) and restart it; kill -9 a worker process mid-job (`--worker-kills`
times); kill -9 a remote device agent (`run_device`, type qpu) mid-job while another
agent takes over its job (`--agent-kills` times); stop PostgreSQL for 5 s and start it; make the database read-only for 5 s. API
probes run through both outages (every answer must be normal or a JSON 503 with
Retry-After). Then everything is reconciled (tests/support/reconcile.py). Prints a table and
writes bench/results/faults.json. The fault steps are tests/support/fault_drill.py, shared with
tests/reliability/test_fault_drill.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bench.common import log, print_table, write_results  # noqa: E402
from bench.soak import drill_env, reset_tables, start_dispatcher  # noqa: E402  (sets up Django)
from devices.commands import send_command  # noqa: E402
from devices.models import Device  # noqa: E402
from jobs.models import Job, User  # noqa: E402
from tests.support.fault_drill import (  # noqa: E402
    admin_cookies,
    bad_answers,
    database_outage,
    kill_agent,
    kill_dispatcher,
    kill_worker,
    read_only_database,
    reconcile_agent_jobs,
)
from tests.support.loadgen import Clients, plan_weighted_jobs  # noqa: E402
from tests.support.processes import (  # noqa: E402
    ServiceProcess,
    free_port,
    start_gateway,
    start_service,
    wait_until,
)

# Remote agents: short runs and a quick health check, as in tests/support/device_fixtures.py.
AGENT_ENV = {
    "ZYPHER_DEVICE_TOKEN": "faults-device-token",
    "ZYPHER_QPU_SECONDS": "0.3",
    "ZYPHER_DEVICE_PING_SECONDS": "0.5",
    "ZYPHER_DEVICE_MISSED_PINGS": "2",
    "ZYPHER_DEVICE_TIMEOUT_SECONDS": "1",
}


def start_agent(
    env: dict[str, str], logs: Path, url: str, name: str, qpu_seconds: str
) -> ServiceProcess:
    """`manage.py run_device` of type qpu on a free port, registered and started."""
    command = [sys.executable, "manage.py", "run_device", "--id", name, "--type", "qpu"]
    command += ["--size", "20", "--port", str(free_port()), "--gateway", url]
    agent = start_service(
        f"agent-{name}", command, {**env, "ZYPHER_QPU_SECONDS": qpu_seconds}, logs, "listening on"
    )
    send_command(Device.objects.get(name=name), "start")
    return agent


def submit_qpu_jobs(url: str, tag: str, count: int) -> list[str]:
    body: dict[str, Any] = {
        "user_id": "drill00",
        "device_type": "qpu",
        "jobs": [{"instructions": ["h 0", "measure"], "shots": 10, "size": 4}] * count,
    }
    response = requests.post(
        url + "/api/programs/", json=body, headers={"Idempotency-Key": tag}, timeout=30
    )
    response.raise_for_status()
    return response.json()["job_ids"]


from tests.support.reconcile import load_job_rows, read_executions, reconcile  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=5, help="kill -9 of the dispatcher")
    parser.add_argument("--worker-kills", type=int, default=3)
    parser.add_argument("--agent-kills", type=int, default=3, help="kill -9 of a remote agent")
    parser.add_argument("--down-seconds", type=float, default=5.0)
    parser.add_argument("--lease", type=float, default=5.0, help="ZYPHER_LEASE_SECONDS")
    options = parser.parse_args()
    if connection.vendor != "postgresql" or "ZYPHER_TEST_PGDATA" not in os.environ:
        print(
            "faults needs the throwaway cluster of tests/support/pgcluster.py: `make bench`",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0)
    reset_tables()
    User.objects.create_user(
        "operator", password="drill-password", is_staff=True, is_superuser=True
    )
    weights = {f"drill{n:02d}": 1 + n % 5 for n in range(20)}
    User.objects.bulk_create(User(username=user, weight=w) for user, w in weights.items())
    jobs = plan_weighted_jobs(weights, 3000, 0.05)
    logs = Path(tempfile.mkdtemp(prefix="zypher-faults-"))
    env = drill_env(
        logs,
        ZYPHER_LEASE_SECONDS=str(options.lease),
        ZYPHER_MAX_ATTEMPTS="10",
        **AGENT_ENV,
    )
    connection.close()
    gateway, url = start_gateway(env, logs)
    started: list = []

    def start(name: str):
        started.append(start_dispatcher(env, logs, name, 4))
        return started[-1]

    recoveries = []
    probes = []
    agents: list[ServiceProcess] = []
    agent_jobs: list[str] = []
    try:
        clients = Clients(url, jobs, processes=2, timeout=600, interval=0.02)
        dispatcher = start("d0")
        wait_until(lambda: Job.objects.filter(status="succeeded").count() > 50, 60, "work")
        for n in range(1, options.kills + 1):
            log(f"faults: kill -9 dispatcher {dispatcher.name}")
            dispatcher, recovery = kill_dispatcher(dispatcher, start, f"d{n}")
            recoveries.append(recovery)
            time.sleep(2)
        for _ in range(options.worker_kills):
            log("faults: kill -9 a worker mid-job")
            recoveries.append(kill_worker(dispatcher))
            time.sleep(1)
        if options.agent_kills:
            agents.append(start_agent(env, logs, url, "qpu-spare", "0.3"))
        for n in range(options.agent_kills):
            log("faults: kill -9 a remote device agent mid-job")
            doomed = start_agent(env, logs, url, f"qpu-doomed{n}", "3")
            agents.append(doomed)
            agent_jobs += submit_qpu_jobs(url, f"agent-kill-{n}", 4)
            recoveries.append(kill_agent(doomed, f"qpu-doomed{n}"))
            time.sleep(1)
        known = str(Job.objects.order_by("id").values_list("public_id", flat=True).first())
        cookies = admin_cookies(url, "operator", "drill-password")
        log(f"faults: PostgreSQL down for {options.down_seconds:g} s")
        outage, probe = database_outage(url, dispatcher, known, cookies, options.down_seconds)
        recoveries.append(outage)
        probes.append(probe)
        log(f"faults: database read-only for {options.down_seconds:g} s")
        read_only, probe = read_only_database(url, dispatcher, known, cookies, options.down_seconds)
        recoveries.append(read_only)
        probes.append(probe)
        survived = dispatcher.process.poll() is None
        report = clients.join()
        for probe in probes:
            report.accepted.update(probe.accepted)
        log("faults: waiting for every job to end")
        wait_until(
            lambda: not Job.objects.filter(status__in=["queued", "running"]).exists(),
            600,
            "every job to end",
            interval=0.5,
        )
    finally:
        for process in [*started, *agents]:
            process.stop()
        gateway.stop()
    result = reconcile(report.accepted, load_job_rows(), read_executions(logs / "executions.log"))
    problems = result.problems(strict=False)
    problems += reconcile_agent_jobs(agent_jobs, [agent.log_text() for agent in agents])
    mid_run = [r for r in recoveries if r.fault.startswith("kill -9 device agent")]
    problems += [r.notes[0] for r in mid_run if "killed mid-run" not in r.notes[0]]
    bad = [a for probe in probes for a in bad_answers(probe)]
    if bad:
        problems.append(f"{len(bad)} bad API answers during outages, e.g. {bad[:3]}")
    if report.protocol_errors:
        problems.append(f"client protocol errors: {report.protocol_errors[:3]}")
    if not survived:
        problems.append("the dispatcher did not survive the database outages")

    def timing(fault: str, key: str) -> list[float]:
        return [
            r.timings[key] for r in recoveries if r.fault.startswith(fault) and key in r.timings
        ]

    rows = []
    for fault, key, label in [
        ("kill -9 dispatcher", "workers_gone_s", "its workers gone (PR_SET_PDEATHSIG)"),
        ("kill -9 dispatcher", "new_dispatcher_claims_s", "restarted dispatcher claims"),
        ("kill -9 dispatcher", "orphans_requeued_s", "its jobs requeued (lease expiry)"),
        ("kill -9 worker", "job_released_s", "job given back to the queue"),
        ("kill -9 worker", "worker_replaced_s", "worker replaced"),
        ("kill -9 worker", "released_job_done_s", "that job done"),
        ("kill -9 device agent", "agent_offline_s", "agent marked offline (missed pings)"),
        ("kill -9 device agent", "job_requeued_s", "its job requeued"),
        ("kill -9 device agent", "job_done_elsewhere_s", "that job done on another agent"),
        ("PostgreSQL stopped", "api_recovered_s", "API accepts jobs after start"),
        ("PostgreSQL stopped", "dispatcher_claims_s", "same dispatcher claims after start"),
        ("database read-only", "api_recovered_s", "API accepts jobs once writable"),
        ("database read-only", "dispatcher_claims_s", "same dispatcher claims once writable"),
    ]:
        values = timing(fault, key)
        if values:
            rows.append([fault, label, len(values), statistics.median(values), max(values)])
    print_table(
        f"Fault drill (PostgreSQL, 4 devices, lease {options.lease:g} s); seconds",
        ["fault", "recovery", "times", "median s", "max s"],
        rows,
    )
    for recovery in recoveries:
        if recovery.fault.startswith(("PostgreSQL", "database")):
            print(f"{recovery.fault}: {'; '.join(recovery.notes)}")
    print(f"reconcile: {result.summary()}")
    print(f"remote agent jobs: {len(agent_jobs)}, all succeeded once unless problems below")
    print(f"HTTP answers to the clients: {report.statuses}")
    print("reconciles: yes" if not problems else f"PROBLEMS: {problems}")
    path = write_results(
        "faults",
        {
            "lease_seconds": options.lease,
            "jobs_planned": len(jobs),
            "agent_jobs": len(agent_jobs),
            "recoveries": [
                {"fault": r.fault, "timings": r.timings, "notes": r.notes} for r in recoveries
            ],
            "probe_answers": {
                probe.name: {
                    str(status): sum(1 for a in probe.answers if a.status == status)
                    for status in sorted({a.status for a in probe.answers})
                }
                for probe in probes
            },
            "client_statuses": report.statuses,
            "reconcile": result.summary(),
            "problems": problems,
        },
    )
    print(f"results: {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
