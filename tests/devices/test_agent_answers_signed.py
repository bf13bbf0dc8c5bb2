# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""Answers between the gateway and its agents are trusted only with the device's secret
(issue 17): an agent refuses every command until it has registered and holds its secret,
and the gateway believes an agent's answer only when it is signed with that secret, so
anything else answering at the device's URL cannot take or hold jobs."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from devices import pool, protocol
from devices.commands import DeviceUnreachable, send_command
from devices.models import Device
from jobs.models import Job, User
from jobs.queue import JobSpec, submit_jobs
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    device_env,
    device_settings,
    start_device_dispatcher,
)
from tests.support.processes import free_port, start_service, wait_until


class Impostor:
    """Answers every command at a device's URL as a willing agent would, without the
    device's secret: unsigned, or signed with another secret (`forged_secret`)."""

    def __init__(self, forged_secret: str = "") -> None:
        self.commands: list[str] = []
        self.job: dict[str, Any] | None = None
        impostor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                message = json.loads(self.rfile.read(length))
                impostor.commands.append(message["command"])
                if message["command"] == "run":
                    args = message["args"]
                    impostor.job = {
                        "job_id": args["job_id"],
                        "fencing_token": args["fencing_token"],
                    }
                status: dict[str, Any] = {"job": impostor.job, "unreported": [], "calculations": 0}
                body = protocol.encode({"ok": True, "state": "ready", "result": status})
                headers = {"Content-Type": "application/json"}
                if forged_secret:
                    nonce = self.headers.get(protocol.NONCE_HEADER, "")
                    headers = protocol.sign_answer(forged_secret, nonce, 200, body)
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["unsigned", "signed with another secret"])
def impostor(request: pytest.FixtureRequest) -> Iterator[Impostor]:
    server = Impostor(forged_secret="f" * 64 if request.param != "unsigned" else "")
    yield server
    server.close()


@pytest.mark.django_db
def test_an_answer_without_the_devices_signature_is_no_answer(impostor, device_settings):
    device, _ = pool.register_device("qpu-x", "qpu", 4, impostor.url)
    with pytest.raises(DeviceUnreachable) as refused:
        send_command(device, "status")
    assert refused.value.status == 502
    assert "signature" in refused.value.message
    assert impostor.commands == ["status"]  # it was asked, and not believed


@pytest.mark.e2e
def test_an_impostor_at_a_devices_url_does_not_hold_its_job(
    impostor, device_env, start_device_dispatcher, caplog
):
    device, _ = pool.register_device("qpu-x", "qpu", 4, impostor.url)
    Device.objects.filter(pk=device.pk).update(state=Device.State.READY)
    [job], _ = submit_jobs(
        User.objects.create(username="alice"),
        [JobSpec("qpu", {"instructions": [], "shots": 5}, device_type="qpu", size=1)],
    )
    dispatcher = start_device_dispatcher()
    wait_until(lambda: "run" in impostor.commands, 15, "the dispatcher to send the job")
    # Its answers say it runs the job; believed, they would renew its lease for ever (the
    # lease is 3 s here). Not believed, the job goes back to the queue.
    wait_until(
        lambda: (
            Job.objects.get(pk=job.pk).status == "queued"
            and Device.objects.get(name="qpu-x").state == "offline"
        ),
        15,
        "the job back in the queue and the device offline",
    )
    job.refresh_from_db()
    assert job.device == "" and "did not take the job" in job.error
    assert "answer refused" in dispatcher.log_text()


@pytest.mark.e2e
@pytest.mark.one_pass
def test_an_agent_refuses_every_command_until_it_has_registered(device_env, tmp_path: Path):
    port, nowhere = free_port(), free_port()  # no gateway listens at `nowhere`
    command = [sys.executable, "manage.py", "run_device", "--id", "qpu-early", "--type", "qpu"]
    command += ["--size", "4", "--port", str(port), "--gateway", f"http://127.0.0.1:{nowhere}"]
    agent = start_service("agent-early", command, device_env, tmp_path, "could not register")
    try:
        url = f"http://127.0.0.1:{port}/commands"
        for message in ({"command": "status"}, {"command": "start"}):
            body = protocol.encode(message)
            for secret in ("", "f" * 64):  # the empty key was accepted before registration
                answer = requests.post(
                    url,
                    data=body,
                    headers=protocol.sign(secret, "POST", "/commands", body),
                    timeout=5,
                )
                assert answer.status_code == 503, answer.text
                assert answer.json()["ok"] is False
                assert "not registered" in answer.json()["error"]
        assert agent.process.poll() is None
    finally:
        agent.stop()
