# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""Dispatching to remote devices with real processes: a gateway, a dispatcher and agents
of type `qpu` (sizes 4 and 20) on free ports. Jobs run on devices that fit, by priority;
results go back to the program's callback; a device that vanishes loses nothing."""

from __future__ import annotations

import os
import signal

import pytest

from devices.models import Device
from jobs.models import Job, Program
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    callback_receiver,
    device_env,
    device_gateway,
    device_settings,
    start_agent,
    start_device_dispatcher,
)
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def submit_program(gateway, sizes, priority=0, callback_url="", user="alice"):
    body = {
        "user_id": user,
        "priority": priority,
        "device_type": "qpu",
        "jobs": [
            {"instructions": ["h 0", "measure"], "shots": 50 + i, "size": s}
            for i, s in enumerate(sizes)
        ],
        "callback_url": callback_url,
    }
    response = gateway.post("/api/programs/", body)
    assert response.status_code == 201, response.text
    return response.json()


def program_finished(gateway, program_id):
    body = gateway.get(f"/api/programs/{program_id}/").json()
    return body if body["state"] == "finished" else None


def test_a_program_of_mixed_sizes_runs_each_job_on_a_device_that_fits_and_calls_back(
    device_gateway, start_agent, start_device_dispatcher, callback_receiver
):
    small, large = start_agent("qpu-4", size=4), start_agent("qpu-20", size=20)
    small.command("start")
    large.command("start")
    start_device_dispatcher()
    sizes = [2, 4, 8, 20, 3, 16, 1]
    created = submit_program(device_gateway, sizes, callback_url=callback_receiver.url)
    assert len(created["job_ids"]) == len(sizes)
    done = wait_until(lambda: program_finished(device_gateway, created["id"]), 60, "the program")
    device_sizes = {"qpu-4": 4, "qpu-20": 20}
    for job, size in zip(done["jobs"], sizes, strict=True):
        assert job["status"] == "succeeded", job
        assert size <= device_sizes[job["device"]], (size, job["device"])
        counts = job["result"]["counts"]
        assert all(len(bits) == device_sizes[job["device"]] for bits in counts)
        assert sum(counts.values()) == 50 + sizes.index(size)
    assert {job["device"] for job in done["jobs"]} == {"qpu-4", "qpu-20"}
    wait_until(lambda: callback_receiver.bodies, 20, "the callback")
    [delivered] = callback_receiver.bodies
    assert delivered["program_id"] == created["id"] and delivered["state"] == "finished"
    assert [job["id"] for job in delivered["jobs"]] == created["job_ids"]
    assert all(job["result"]["counts"] for job in delivered["jobs"])
    program = Program.objects.get(public_id=created["id"])
    wait_until(
        lambda: Program.objects.get(pk=program.pk).callback_status == "delivered", 10, "record"
    )
    assert Program.objects.get(pk=program.pk).callback_attempts == 1
    states = dict(Device.objects.values_list("name", "state"))
    assert states == {"qpu-4": "ready", "qpu-20": "ready"}


def test_priorities_order_dispatch_among_a_users_programs(
    device_gateway, start_agent, start_device_dispatcher
):
    agent = start_agent("qpu-20", size=20)
    start_device_dispatcher()
    low = submit_program(device_gateway, [1, 1, 1], priority=1)
    high = submit_program(device_gateway, [1, 1, 1], priority=9)
    agent.command("start")
    wait_until(lambda: program_finished(device_gateway, low["id"]), 60, "both programs")
    order = list(Job.objects.order_by("started_at").values_list("public_id", flat=True))
    assert [str(public_id) for public_id in order] == high["job_ids"] + low["job_ids"]


def test_terminate_during_run_requeues_the_job_which_then_runs_elsewhere(
    device_gateway, start_agent, start_device_dispatcher
):
    slow = start_agent("qpu-slow", size=4, ZYPHER_QPU_SECONDS="30")
    spare = start_agent("qpu-spare", size=4)
    slow.command("start")
    start_device_dispatcher()
    [job_id] = submit_program(device_gateway, [4])["job_ids"]
    wait_until(lambda: Job.objects.filter(public_id=job_id, status="running").exists(), 20, "run")
    assert slow.command("status").body["result"]["job"]["job_id"] == job_id
    assert slow.command("terminate").status == 200
    assert slow.process.process.wait(timeout=15) == 0
    job = Job.objects.get(public_id=job_id)
    assert job.status == "queued" and job.attempts == 1, (job.status, job.error)
    assert not Device.objects.filter(name="qpu-slow").exists()
    spare.command("start")
    wait_until(lambda: Job.objects.get(public_id=job_id).status == "succeeded", 30, "the rerun")
    job = Job.objects.get(public_id=job_id)
    assert job.device == "qpu-spare" and job.attempts == 2


def test_a_device_killed_mid_job_loses_nothing(
    device_gateway, start_agent, start_device_dispatcher
):
    doomed = start_agent("qpu-doomed", size=20, ZYPHER_QPU_SECONDS="30")
    survivor = start_agent("qpu-survivor", size=20)
    doomed.command("start")
    dispatcher = start_device_dispatcher()
    [job_id] = submit_program(device_gateway, [8])["job_ids"]
    wait_until(
        lambda: Job.objects.filter(public_id=job_id, status="running").exists(), 20, "the run"
    )
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.process.wait(timeout=10)
    survivor.command("start")
    # Two recovery paths race here (offline detection, lease expiry); either may requeue
    # the job. What must hold is the outcome: requeued once, run again, ended once.
    wait_until(lambda: Device.objects.get(name="qpu-doomed").state == "offline", 20, "offline")
    wait_until(lambda: Job.objects.get(public_id=job_id).status == "succeeded", 30, "the rerun")
    job = Job.objects.get(public_id=job_id)
    assert job.device == "qpu-survivor" and job.attempts == 2 and job.result is not None
    assert sum(job.result["counts"].values()) == 50
    # Ran to completion once: only the survivor finished it.
    assert survivor.log().count(f"job {job_id} succeeded") == 1
    assert f"job {job_id} succeeded" not in doomed.log()
    assert not Job.objects.filter(status__in=["queued", "running"]).exists()
    assert Device.objects.get(name="qpu-survivor").current_job is None
    assert dispatcher.process.poll() is None
