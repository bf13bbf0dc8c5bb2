"""The `zypher` console script end to end: what it prints where, and its exit status
(0 succeeded, 1 failed, 2 usage), against the package's gateway and dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from zypher_client.cli import main

from tests.client.helpers import StderrLines, hold_input, release, zypher_command
from tests.support.processes import Gateway, wait_until

pytestmark = pytest.mark.e2e


def zypher(server: Gateway, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*zypher_command(), "--url", server.url, "--user", user, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_submit_wait_prints_the_result_json_on_stdout_and_exits_0(
    server: Gateway, user: str
) -> None:
    done = zypher(server, user, "submit", "--kind", "limited_f", "5", "--wait")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"x": 5, "y": 25}  # stdout holds the JSON alone
    assert "succeeded" in done.stderr


def test_submit_wait_shows_the_queue_position_then_the_running_job(
    server: Gateway, user: str, release_dir: Path
) -> None:
    """The one device runs a held job, so the CLI's job waits in the queue; released, it
    runs (held again), then ends. The live view on stderr follows each step."""
    first = zypher(
        server, user, "submit", "--kind", "hold", json.dumps(hold_input(release_dir, "a"))
    )
    assert first.returncode == 0, first.stderr
    command = [*zypher_command(), "--url", server.url, "--user", user, "submit"]
    command += ["--kind", "hold", json.dumps(hold_input(release_dir, "b")), "--wait"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = StderrLines(process)
    saw, seen = stderr.saw, stderr.seen

    try:
        wait_until(lambda: saw("queued, position"), 60, "the CLI to show the queue position")
        release(release_dir, "a")
        wait_until(lambda: saw("running"), 60, "the CLI to show the job running")
        release(release_dir, "b")
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 0, seen
    assert json.loads(stdout) == {"held": "b", "released": True}


def test_a_failed_job_exits_1_with_its_error_on_stderr(server: Gateway, user: str) -> None:
    failed = zypher(server, user, "submit", "--kind", "boom", "3", "--wait")

    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "failed" in failed.stderr and "boom on 3" in failed.stderr


def test_get_jobs_and_cancel_print_json_and_a_refused_cancel_exits_1(
    server: Gateway, user: str
) -> None:
    queued = zypher(server, user, "submit", "--device-type", "nowhere", '{"n": 1}')
    assert queued.returncode == 0, queued.stderr
    job = json.loads(queued.stdout)
    assert (job["status"], job["input"]) == ("queued", {"n": 1})

    cancelled = zypher(server, user, "cancel", job["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"

    listed = zypher(server, user, "jobs")
    assert [item["id"] for item in json.loads(listed.stdout)] == [job["id"]]
    shown = zypher(server, user, "get", job["id"])
    assert json.loads(shown.stdout)["status"] == "cancelled"

    again = zypher(server, user, "cancel", job["id"])
    assert again.returncode == 1
    assert again.stdout == ""
    assert "only a queued job can be cancelled" in again.stderr


def test_server_errors_exit_1_with_the_servers_message(server: Gateway, user: str) -> None:
    unknown_kind = zypher(server, user, "submit", "--kind", "no-such-kind", "1")
    missing = zypher(server, user, "get", "00000000-0000-4000-8000-000000000000")

    assert (unknown_kind.returncode, missing.returncode) == (1, 1)
    assert "zypher: error: kind: Unknown kind 'no-such-kind'" in unknown_kind.stderr
    assert "zypher: error: No Job matches the given query." in missing.stderr


def test_usage_errors_exit_2(server: Gateway, user: str) -> None:
    assert zypher(server, user, "submit").returncode == 2  # no input: the real script
    for argv in (["no-such-command"], ["submit", "1", "--priority", "high"], []):
        with pytest.raises(SystemExit) as usage:  # the same parser, in this process
            main(argv)
        assert usage.value.code == 2


def test_predict_prints_the_models_output_with_the_url_from_the_environment(
    server: Gateway, user: str
) -> None:
    command = [*zypher_command(), "--user", user, "predict", "hello"]
    env = {**os.environ, "ZYPHER_URL": server.url}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["input"] == "hello"
