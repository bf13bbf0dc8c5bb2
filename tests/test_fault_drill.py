"""The fault drill, short: faults under load, then nothing lost, nothing recorded twice.

While clients submit a steady trickle of jobs over HTTP: the dispatcher is killed with
kill -9 three times and restarted, a worker process is killed mid-job, PostgreSQL
is stopped for 5 s and started again, and the database is made read-only for 5 s. The API must answer 503 with a JSON error while
the database is down and recover by itself; the same dispatcher process must carry on.
The longer version with the figures is bench/faults.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.models import Job, User
from tests.fault_drill import (
    admin_cookies,
    bad_answers,
    database_outage,
    kill_dispatcher,
    kill_worker,
    read_only_database,
)
from tests.loadgen import Clients, plan_weighted_jobs
from tests.processes import wait_until
from tests.reconcile import load_job_rows, read_executions, reconcile

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


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
