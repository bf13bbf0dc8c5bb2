# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""The device agent (`run_device`): every command in every state, always answering while
work runs in the background, refusing untrusted messages while staying up, and ending
cleanly on `terminate`."""

from __future__ import annotations

import time

import pytest
import requests
from rest_framework.authtoken.models import Token

from devices import protocol
from devices.models import Device
from jobs.models import User
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    device_env,
    device_gateway,
    device_settings,
    start_agent,
)
from tests.support.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.one_pass]

FAKE_RUN = {
    "job_id": "6f0c0000-0000-4000-8000-000000000000",
    "fencing_token": 1,
    "kind": "qpu",
    "input": {"instructions": [], "shots": 5},
}


def test_every_command_in_the_unready_state(start_agent):
    agent = start_agent("qpu-u", size=4)
    assert agent.device().state == "unready"
    status = agent.command("status")
    assert status.status == 200 and status.body["state"] == "unready"
    assert status.body["result"]["job"] is None
    for command, args in [("ping", {}), ("calculate", {"x": 0.1, "msg": "no"}), ("run", FAKE_RUN)]:
        answer = agent.command(command, **args)
        assert answer.status == 409, (command, answer)
        assert answer.body == {
            "ok": False,
            "state": "unready",
            "error": f"{command!r} refused: the device is unready (send start)",
        }
    stop = agent.command("stop")
    assert stop.status == 200 and stop.body["result"] == "already unready: nothing to do"
    start = agent.command("start")
    assert start.status == 200 and start.body["state"] == "ready"
    # The agent reports its state change to the gateway.
    wait_until(lambda: agent.device().state == "ready", 10, "the gateway to see the device ready")


def test_every_command_in_the_ready_state(start_agent):
    agent = start_agent("qpu-r", size=4)
    agent.command("start")
    again = agent.command("start")
    assert again.status == 200 and again.body["result"] == "already ready: nothing to do"
    before = int(time.time())
    ping = agent.command("ping")
    assert ping.status == 200 and isinstance(ping.body["result"], int)
    assert before <= ping.body["result"] <= int(time.time())
    calculate = agent.command("calculate", x=0.2, msg="calculated-hello")
    assert calculate.status == 200 and calculate.body["state"] == "ready"
    wait_until(lambda: "calculated-hello" in agent.log(), 10, "the calculation's message")
    stop = agent.command("stop")
    assert stop.status == 200 and stop.body["state"] == "unready"
    assert agent.command("ping").status == 409
    wait_until(lambda: agent.device().state == "unready", 10, "the gateway to see it unready")


def test_the_agent_keeps_answering_ping_while_a_calculate_5_runs(start_agent):
    agent = start_agent("qpu-p", size=4)
    agent.command("start")
    assert agent.command("calculate", x=5, msg="five-seconds-done").status == 200
    for _ in range(5):
        started = time.monotonic()
        ping = agent.command("ping")
        assert ping.status == 200 and isinstance(ping.body["result"], int)
        # Answered while the 5 s calculation runs, not after it.
        assert time.monotonic() - started < 2
        time.sleep(0.2)
    assert "five-seconds-done" not in agent.log()
    assert agent.command("status").body["result"]["calculations"] == 1


def test_stop_during_calculate_lets_it_finish_and_refuses_new_data_commands(start_agent):
    agent = start_agent("qpu-s", size=4)
    agent.command("start")
    agent.command("calculate", x=1.0, msg="finished-after-stop")
    stop = agent.command("stop")
    assert stop.status == 200
    assert "allowed to finish" in stop.body["result"]
    assert agent.command("calculate", x=0.1, msg="never").status == 409
    wait_until(lambda: "finished-after-stop" in agent.log(), 10, "the calculation to finish")
    assert "never" not in agent.log()


def test_terminate_deregisters_and_exits_0_from_either_state(start_agent):
    unready = start_agent("qpu-t1", size=4)
    ready = start_agent("qpu-t2", size=4)
    ready.command("start")
    ready.command("calculate", x=30, msg="cut-short")
    for agent in (unready, ready):
        answer = agent.command("terminate")
        assert answer.status == 200 and answer.body["state"] == "terminated"
        assert agent.process.process.wait(timeout=15) == 0
        assert not Device.objects.filter(name=agent.device_id).exists()
    assert "cut-short" not in ready.log()


def raw_command(agent, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(agent.url + "/commands", data=body, headers=headers, timeout=5)


def test_forged_stale_replayed_and_malformed_messages_are_refused_and_the_agent_stays_up(
    start_agent,
):
    agent = start_agent("qpu-x", size=4)
    agent.command("start")
    secret = agent.device().secret
    ping = protocol.encode({"command": "ping", "args": {}})

    def sign(body: bytes, **kwargs) -> dict[str, str]:
        return protocol.sign(secret, "POST", "/commands", body, **kwargs)

    forged = raw_command(agent, ping, protocol.sign("0" * 64, "POST", "/commands", ping))
    assert forged.status_code == 401 and forged.json()["error"] == "bad signature"
    unsigned = raw_command(agent, ping, {})
    assert unsigned.status_code == 401
    stale = raw_command(agent, ping, sign(ping, timestamp=int(time.time()) - 300))
    assert stale.status_code == 401 and "stale" in stale.json()["error"]
    headers = sign(ping)
    assert raw_command(agent, ping, headers).status_code == 200
    replayed = raw_command(agent, ping, headers)
    assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]
    for body, reason in [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (protocol.encode({"command": "selfdestruct"}), "unknown command"),
        (protocol.encode({"command": "calculate", "args": {"x": "a", "msg": 1}}), "malformed"),
        (protocol.encode({"command": "run", "args": {"kind": "qpu"}}), "required property"),
    ]:
        answer = raw_command(agent, body, sign(body))
        assert answer.status_code == 400, body
        assert reason in answer.json()["error"]
    oversize = b'{"command": "ping", "pad": "' + b"x" * protocol.MAX_COMMAND_BYTES + b'"}'
    answer = raw_command(agent, oversize, sign(oversize))
    assert answer.status_code == 413
    # Still up and still answering.
    assert agent.process.process.poll() is None
    assert agent.command("ping").status == 200


def test_tampered_streamed_oversize_and_replayed_run_messages_are_refused_and_it_stays_up(
    start_agent,
):
    agent = start_agent("qpu-y", size=4, ZYPHER_QPU_SECONDS="30")
    agent.command("start")
    secret = agent.device().secret
    ping = protocol.encode({"command": "ping", "args": {}})

    def sign(body: bytes, path: str = "/commands") -> dict[str, str]:
        return protocol.sign(secret, "POST", path, body)

    # A good signature over another body, or for another path.
    tampered = raw_command(agent, protocol.encode({"command": "stop", "args": {}}), sign(ping))
    assert tampered.status_code == 401
    assert raw_command(agent, ping, sign(ping, "/elsewhere")).status_code == 401
    # Oversize without a Content-Length (chunked), far beyond the server's own limit.
    chunks = (b"x" * 65536 for _ in range(4 * protocol.MAX_COMMAND_BYTES // 65536))
    streamed = requests.post(agent.url + "/commands", data=chunks, headers=sign(b""), timeout=10)
    assert streamed.status_code == 413
    # A replayed `run` must not start the job a second time.
    run = protocol.encode({"command": "run", "args": FAKE_RUN})
    headers = sign(run)
    assert raw_command(agent, run, headers).status_code == 200
    replayed = raw_command(agent, run, headers)
    assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]
    assert agent.log().count(f"run job {FAKE_RUN['job_id']}") == 1
    assert agent.command("status").body["result"]["job"]["job_id"] == FAKE_RUN["job_id"]
    # Still up and still answering.
    assert agent.process.process.poll() is None
    assert agent.command("ping").status == 200
    assert agent.device().state == "ready"


def test_the_commands_api_sends_commands_for_staff(start_agent, device_gateway):
    agent = start_agent("qpu-api", size=4)
    staff = User.objects.create(username="operator", is_staff=True, is_superuser=True)
    headers = {"Authorization": f"Token {Token.objects.create(user=staff).key}"}
    url = "/api/devices/qpu-api/commands/"

    def send(body: dict) -> requests.Response:
        return device_gateway.post(url, body, headers=headers)

    refused = send({"command": "ping"})
    assert refused.status_code == 409
    assert refused.json()["ok"] is False and refused.json()["state"] == "unready"
    assert send({"command": "start"}).json() == {
        "ok": True,
        "state": "ready",
        "result": "started: accepting data commands",
    }
    ping = send({"command": "ping"}).json()
    assert ping["ok"] is True and isinstance(ping["result"], int)
    calculate = send({"command": "calculate", "args": {"x": 0.1, "msg": "via-api"}})
    assert calculate.status_code == 200
    assert send({"command": "calculate", "args": {"x": 0.1}}).status_code == 400
    wait_until(lambda: "via-api" in agent.log(), 10, "the calculation's message")
    anonymous = device_gateway.post(url, {"command": "ping"})
    assert anonymous.status_code in (401, 403)
