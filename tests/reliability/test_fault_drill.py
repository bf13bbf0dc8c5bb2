# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""The fault drill, short: faults under load, then nothing lost, nothing recorded twice.

While clients submit a steady trickle of jobs over HTTP: the dispatcher is killed with
kill -9 three times and restarted, a worker process is killed mid-job, PostgreSQL
is stopped for 5 s and started again, and the database is made read-only for 5 s. The API
must answer 503 with a JSON error while the database is down and recover by itself; the
same dispatcher process must carry on. Separately, a remote device agent is killed with
kill -9 mid-job while another agent runs the rest of a batch of qpu jobs.
The longer version with the figures is bench/faults.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.models import Device
from jobs.models import Job, User
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    device_env,
    device_gateway,
    device_settings,
    start_agent,
    start_device_dispatcher,
)
from tests.support.fault_drill import (
    admin_cookies,
    bad_answers,
    database_outage,
    kill_agent,
    kill_dispatcher,
    kill_worker,
    read_only_database,
    reconcile_agent_jobs,
)
from tests.support.loadgen import Clients, plan_weighted_jobs
from tests.support.processes import wait_until
from tests.support.reconcile import load_job_rows, read_executions, reconcile

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def subprocess_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    # While PostgreSQL is down a web request waits the pool's timeout (3 s by default)
    # before its 503; a short one lets the probe try every route within the 5 s outage.
    return {**subprocess_env, "ZYPHER_DB_POOL_TIMEOUT": "0.5"}


def test_faults_lose_nothing_and_record_nothing_twice(
    gateway, start_dispatcher, subprocess_env, tmp_path
):
    User.objects.create_user(
        "operator", password="drill-password", is_staff=True, is_superuser=True
    )
    User.objects.bulk_create(User(username=f"drill{n}", weight=1 + n % 5) for n in range(10))
    weights = {f"drill{n}": 1 + n % 5 for n in range(10)}
    jobs = plan_weighted_jobs(weights, total=500, seconds=0.05)
    clients = Clients(gateway.url, jobs, processes=2, timeout=120, interval=0.08)

    def start(name: str):
        # Repeated faults may hit one job several times: let it retry rather than fail.
        return start_dispatcher(devices=2, name=name, ZYPHER_MAX_ATTEMPTS="10")

    dispatcher = start("d0")
    wait_until(lambda: Job.objects.filter(status="succeeded").count() > 20, 30, "work to flow")

    recoveries = []
    for n in range(1, 4):
        dispatcher, recovery = kill_dispatcher(dispatcher, start, f"d{n}")
        recoveries.append(recovery)
    recoveries.append(kill_worker(dispatcher))
    known = str(Job.objects.order_by("id").values_list("public_id", flat=True).first())
    cookies = admin_cookies(gateway.url, "operator", "drill-password")
    outage, probe = database_outage(gateway.url, dispatcher, known, cookies, down_seconds=5)
    read_only, read_only_probe = read_only_database(gateway.url, dispatcher, known, cookies)
    recoveries += [outage, read_only]

    report = clients.join()
    report.accepted.update(probe.accepted)
    report.accepted.update(read_only_probe.accepted)
    wait_until(
        lambda: not Job.objects.filter(status__in=["queued", "running"]).exists(),
        90,
        "every accepted job to end",
    )
    result = reconcile(
        report.accepted,
        load_job_rows(),
        read_executions(Path(subprocess_env["ZYPHER_TEST_EXEC_LOG"])),
    )
    for recovery in recoveries:
        print(recovery.fault, {k: round(v, 2) for k, v in recovery.timings.items()}, recovery.notes)
    print(result.summary(), report.statuses)

    assert not report.protocol_errors, report.protocol_errors[:5]
    assert not report.given_up
    for answers in (probe, read_only_probe):
        assert not bad_answers(answers), bad_answers(answers)[:5]
    down = [a for a in probe.answers if a.status == 503]
    assert {a.request for a in down} == {a.request for a in probe.answers}, "every request 503'd"
    refused = {a.request for a in read_only_probe.answers if a.status == 503}
    assert {"POST /api/jobs/", "POST /predict"} <= refused
    assert dispatcher.process.poll() is None, "the dispatcher did not survive the outage"
    assert result.problems(strict=False) == []
    assert result.accepted == len(jobs) + len(probe.accepted) + len(read_only_probe.accepted)
    assert result.by_status.get("succeeded") == result.accepted
    assert outage.timings["api_recovered_s"] < 10
    assert outage.timings["dispatcher_claims_s"] < 15
    assert read_only.timings["api_recovered_s"] < 10
    assert read_only.timings["dispatcher_claims_s"] < 15


def test_an_agent_killed_mid_job_loses_nothing_and_runs_nothing_twice(
    device_gateway, start_agent, start_device_dispatcher
):
    # The doomed agent's runs last long enough to be caught mid-job; the other's are short.
    doomed = start_agent("qpu-doomed", size=20, ZYPHER_QPU_SECONDS="3")
    spare = start_agent("qpu-spare", size=20)
    doomed.command("start")
    spare.command("start")
    dispatcher = start_device_dispatcher()
    job_ids = []
    for batch in range(2):
        body = {
            "user_id": "alice",
            "device_type": "qpu",
            "jobs": [{"instructions": ["h 0", "measure"], "shots": 10, "size": 4}] * 4,
        }
        response = device_gateway.post(
            "/api/programs/", body, headers={"Idempotency-Key": f"{batch}"}
        )
        assert response.status_code == 201, response.text
        job_ids += response.json()["job_ids"]

    recovery = kill_agent(doomed.process, "qpu-doomed", timeout=30)
    print(recovery.fault, {k: round(v, 2) for k, v in recovery.timings.items()}, recovery.notes)
    wait_until(
        lambda: not Job.objects.filter(status__in=["queued", "running"]).exists(),
        30,
        "every job to end",
    )

    assert "killed mid-run" in recovery.notes[0]
    assert reconcile_agent_jobs(job_ids, [doomed.log(), spare.log()]) == []
    assert Job.objects.filter(public_id__in=job_ids, status="succeeded").count() == len(job_ids)
    assert not Job.objects.filter(status__in=["queued", "running"]).exists()
    # Offline detection or lease expiry may requeue the job (they race): assert the outcome.
    assert Device.objects.get(name="qpu-doomed").state == "offline"
    assert Device.objects.get(name="qpu-spare").current_job is None
    assert dispatcher.process.poll() is None
    assert spare.process.process.poll() is None
    assert recovery.timings["job_requeued_s"] < 10
    assert recovery.timings["job_done_elsewhere_s"] < 15
