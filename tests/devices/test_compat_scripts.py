# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""The exercise's own curl script, run unmodified through bash and curl against a real
gateway and dispatcher: devices at non-URL addresses are simulated, so its jobs run to
completion and their results can be read back by the client's ids."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import requests
from rest_framework.test import APIClient

from devices.models import ClientProgramId, Device
from jobs.models import Job
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    DEVICE_ENV,
    DEVICE_TOKEN,
    device_gateway,
    device_settings,
    start_device_dispatcher,
)
from tests.support.processes import ROOT, wait_until

SCRIPT = ROOT / "tests" / "devices" / "compat" / "qpu_exercise.sh"


@pytest.fixture
def device_env(subprocess_env: dict[str, str], device_settings: None) -> dict[str, str]:
    """The scripts' setting: open mode without a registration token (with one, the
    routes that register and remove devices need it, issue 17)."""
    subprocess_env.update(DEVICE_ENV)
    del subprocess_env["ZYPHER_DEVICE_TOKEN"]
    return subprocess_env


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_exercise_script_runs_unmodified_and_its_jobs_complete(
    device_env, device_gateway, start_device_dispatcher
):
    start_device_dispatcher()
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**device_env, "ZYPHER_URL": device_gateway.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(answers) == 8, done.stdout
    devices, jobs, deleted = answers[:3], answers[3:7], answers[7]
    assert [(d["id"], d["kind"], d["size"]) for d in devices] == [
        ("qpu-a", "simulated", 5),
        ("qpu-b", "simulated", 20),
        ("qpu-c", "simulated", 3),
    ]
    assert all("secret" not in device for device in devices)
    assert [job["id"] for job in jobs] == ["1", "2", "3", "4"]
    assert [job["program_id"] for job in jobs] == ["p1", "p1", "p2", "p2"]
    assert deleted == {"id": "qpu-c", "deleted": True}
    assert set(Device.objects.values_list("name", flat=True)) == {"qpu-a", "qpu-b"}
    # program_id groups jobs into programs, one per (user, client program id).
    programs = {m.client_id: m.program_id for m in ClientProgramId.objects.all()}
    assert set(programs) == {"p1", "p2"}
    assert Job.objects.filter(program_id=programs["p1"]).count() == 2

    def read(client_id: str) -> dict[str, Any]:
        return requests.get(f"{device_gateway.url}/jobs/{client_id}", timeout=10).json()

    wait_until(
        lambda: all(read(i)["status"] == "succeeded" for i in "1234"), 60, "the script's jobs"
    )
    for client_id in "1234":
        job = read(client_id)
        assert job["device"] in ("qpu-a", "qpu-b")
        counts = job["result"]["counts"]
        assert sum(counts.values()) == 100  # the default shots
        assert all(len(bits) == {"qpu-a": 5, "qpu-b": 20}[job["device"]] for bits in counts)


@pytest.mark.django_db
def test_the_compat_routes_answer_201_to_json_without_a_content_type(settings):
    settings.ZYPHER_OPEN_MODE = True
    client = APIClient()
    raw = json.dumps({"id": "7", "priority": 1, "user_id": "u9", "device_type": "qpu"})
    created = client.generic("POST", "/jobs", raw, content_type="")
    assert created.status_code == 201, created.content
    again = client.generic("POST", "/jobs", raw, content_type="application/x-www-form-urlencoded")
    assert again.status_code == 200 and again.json()["job_id"] == created.json()["job_id"]
    bad = client.generic("POST", "/jobs", "{oops", content_type="")
    assert bad.status_code == 400


@pytest.mark.django_db
def test_without_open_mode_the_compat_registration_needs_the_token(settings):
    settings.ZYPHER_OPEN_MODE = False
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    client = APIClient()
    body = json.dumps({"id": "qpu-z", "address": "addr1", "type": "qpu", "size": 5})
    assert client.generic("POST", "/devices", body, content_type="").status_code == 401
    assert client.generic("DELETE", "/devices/qpu-z").status_code == 401
    with_token = client.generic(
        "POST", "/devices", body, content_type="", HTTP_X_ZYPHER_DEVICE_TOKEN=DEVICE_TOKEN
    )
    assert with_token.status_code == 201
    job = json.dumps({"id": "1", "user_id": "u1"})
    assert client.generic("POST", "/jobs", job, content_type="").status_code == 401
