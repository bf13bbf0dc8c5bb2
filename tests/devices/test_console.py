# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""The operator's console (`device_console`), driven through its stdin against a real agent."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from devices.models import Device
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    device_env,
    device_gateway,
    device_settings,
    start_agent,
)
from tests.support.processes import ROOT, wait_until

# The console and the agent speak HTTP to each other; the database only holds the device
# registry, so the test runs once (one_pass), in the PostgreSQL pass when one follows.
pytestmark = [pytest.mark.e2e, pytest.mark.one_pass]

SESSION = """\
ping
start
start
ping
calculate 0 hello from the console
calculate
calculate soon hello
calculate 99999 too long
bogus
stop now
status
help

stop
ping
terminate
"""


def console(device_env: dict[str, str], device_id: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "device_console", device_id],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=device_env,
        timeout=60,
    )


def test_the_console_sends_each_command_and_prints_the_answer(device_env, start_agent):
    agent = start_agent("qpu-c", size=4)
    done = console(device_env, "qpu-c", SESSION)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    answers = [line.split("qpu-c> ")[-1] for line in done.stdout.splitlines()]
    answers = [answer for answer in answers if answer]
    expected = [
        r"console for device qpu-c; type help for the commands",
        r"refused \(409\) \[unready\] 'ping' refused: the device is unready \(send start\)",
        r"ok \[ready\] started: accepting data commands",
        r"ok \[ready\] already ready: nothing to do",
        r"ok \[ready\] \d{10}",
        r"ok \[ready\] calculating for 0(.0)?s in the background",
        r"usage: calculate <x> <msg> .*",
        r"x must be a number of seconds, not 'soon'; usage: .*",
        r"x must be from 0 to 3600 seconds; usage: .*",
        r"unknown command 'bogus'; commands: start, stop, ping, calculate, terminate, status, help, quit",
        r"stop takes no arguments; usage: stop .*",
        r'ok \[ready\] \{"id": "qpu-c", "type": "qpu", "size": 4, "job": null, .*',
        r"pool: state ready, job -",
        *[r"\w+ +.*"] * 8,  # help: one line per command
        r"ok \[unready\] stopped: refusing data commands( \(the running work .*)?",
        r"refused \(409\) \[unready\] 'ping' refused: .*",
        r"ok \[terminated\] terminating",
    ]
    assert len(answers) == len(expected), answers
    for answer, pattern in zip(answers, expected, strict=True):
        assert re.fullmatch(pattern, answer), (answer, pattern)
    assert agent.process.process.wait(timeout=15) == 0
    wait_until(lambda: "hello from the console" in agent.log(), 5, "the calculation's message")
    assert not Device.objects.filter(name="qpu-c").exists()


def test_the_console_refuses_an_unknown_device_and_reports_an_unreachable_one(
    device_env, start_agent
):
    unknown = console(device_env, "nope", "ping\n")
    assert unknown.returncode != 0 and "not registered" in unknown.stderr
    agent = start_agent("qpu-gone", size=4)
    agent.process.kill()
    done = console(device_env, "qpu-gone", "ping\nquit\n")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr
    assert re.search(r"refused \(502\) \[\w+\] device qpu-gone at .* is unreachable", done.stdout)
