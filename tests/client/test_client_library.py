"""`zypher_client.Client` end to end against the real gateway and dispatcher (conftest).

Jobs meant to stay queued go to the pool `nowhere`, which no device serves.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from zypher_client import (
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    Job,
    JobFailed,
    NotFound,
    RateLimited,
    Timeout,
)

from tests.client.conftest import MAX_QUEUED
from tests.client.helpers import hold_input, release
from tests.client.proxy import AnswerLosingProxy
from tests.support.processes import Gateway, free_port

pytestmark = pytest.mark.e2e

NOWHERE = "nowhere"


def test_a_submitted_job_is_waited_for_and_its_result_returned(server: Gateway, user: str) -> None:
    seen: list[Job] = []
    with Client(server.url, user=user) as zypher:
        job = zypher.submit(5)
        assert (job.status, job.input, job.data["user_id"]) == ("queued", 5, user)

        done = zypher.wait(job.id, timeout=60, on_update=seen.append)

        assert (done.id, done.status, done.result) == (job.id, "succeeded", {"x": 5, "y": 25})
        assert seen[-1].status == "succeeded"
        assert zypher.result(job.id) == {"x": 5, "y": 25}
        assert zypher.get(job.id).data["finished_at"] is not None


def test_wait_reports_each_state_the_job_passes_through(
    server: Gateway, user: str, release_dir: Path
) -> None:
    """A held job is seen running, then ended: `on_update` follows the job."""
    seen: list[str] = []
    with Client(server.url, user=user) as zypher:
        job = zypher.submit(hold_input(release_dir, "a"), kind="hold")

        def on_update(state: Job) -> None:
            seen.append(state.status)
            if state.status == "running":
                release(release_dir, "a")

        done = zypher.wait(job.id, timeout=60, on_update=on_update)

    assert done.result == {"held": "a", "released": True}
    assert "running" in seen and seen[-1] == "succeeded"


def test_submit_many_queues_every_job_in_one_request(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher:
        jobs = zypher.submit_many([{"input": n, "priority": n} for n in range(3)])

        assert [job.input for job in jobs] == [0, 1, 2]
        assert len({job.id for job in jobs}) == 3
        results = [zypher.result(job.id, timeout=60) for job in jobs]
        assert results == [{"x": n, "y": n * n} for n in range(3)]
        assert [job.id for job in zypher.jobs()] == [job.id for job in reversed(jobs)]
        assert zypher.jobs(status="failed") == []


def test_a_queued_job_is_cancelled_and_its_waiter_told(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher:
        job = zypher.submit(1, device_type=NOWHERE)

        cancelled = zypher.cancel(job.id)

        assert cancelled.status == "cancelled"
        assert zypher.wait(job.id, timeout=30).status == "cancelled"
        with pytest.raises(JobFailed) as failed:
            zypher.result(job.id)
        assert failed.value.job.status == "cancelled"
        with pytest.raises(Conflict) as conflict:
            zypher.cancel(job.id)
        assert conflict.value.message == "Job is cancelled; only a queued job can be cancelled."


def test_a_failed_job_raises_with_the_handlers_error(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher:
        job = zypher.submit(3, kind="boom")
        with pytest.raises(JobFailed) as failed:
            zypher.result(job.id, timeout=60)
    assert failed.value.job.status == "failed"
    assert "boom on 3" in failed.value.message


def test_an_unknown_job_is_not_found_with_the_servers_message(server: Gateway, user: str) -> None:
    missing = str(uuid.uuid4())
    server_says = httpx.get(f"{server.url}/api/jobs/{missing}/").json()["error"]
    with Client(server.url, user=user) as zypher:
        for call in (zypher.get, zypher.cancel, zypher.wait):
            with pytest.raises(NotFound) as not_found:
                call(missing)
            assert not_found.value.status == 404
        with pytest.raises(NotFound) as not_found:
            zypher.get(missing)
        assert not_found.value.message == server_says
        with pytest.raises(NotFound):
            zypher.get("../../api/health")  # one path segment: never another route


def test_bad_input_is_a_bad_request_naming_the_problem(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher:
        with pytest.raises(BadRequest) as unknown_kind:
            zypher.submit(1, kind="no-such-kind")
        assert unknown_kind.value.status == 400
        assert unknown_kind.value.message.startswith("kind: Unknown kind 'no-such-kind'")

        with pytest.raises(BadRequest) as priority:
            zypher.submit(1, priority=1000)
        assert priority.value.message == "priority: Ensure this value is less than or equal to 100."

        with pytest.raises(BadRequest) as bulk:
            zypher.submit_many([{"input": 1}, {"input": 2, "priority": "high"}])
        assert bulk.value.message == "Item 1 is invalid; nothing was queued."
        assert "1" in bulk.value.body["items"]
        assert zypher.jobs() == []  # all or nothing


def test_a_user_over_the_queued_cap_is_rate_limited_with_retry_after(
    server: Gateway, user: str
) -> None:
    with Client(server.url, user=user) as zypher, pytest.raises(RateLimited) as limited:
        zypher.submit_many([{"input": n, "device_type": NOWHERE} for n in range(MAX_QUEUED + 1)])
    assert limited.value.status == 429
    assert limited.value.retry_after > 0
    assert limited.value.body["limit"] == "max_queued_per_user"
    assert str(MAX_QUEUED) in limited.value.message


def test_a_submit_whose_answer_was_lost_is_retried_without_a_second_job(
    server: Gateway, user: str
) -> None:
    """The proxy forwards the first submit and drops the server's answer; the client
    retries with the same Idempotency-Key and gets the job the first attempt created."""
    proxy = AnswerLosingProxy(int(server.url.rsplit(":", 1)[1]), lose=1)
    try:
        with Client(proxy.url, user=user, backoff=0.01) as zypher:
            job = zypher.submit(7, device_type=NOWHERE)
    finally:
        proxy.close()

    assert proxy.lost == 1  # the first answer really was lost
    with Client(server.url, user=user) as direct:
        assert [listed.id for listed in direct.jobs()] == [job.id]
        assert direct.get(job.id).input == 7


def test_a_bulk_submit_whose_answer_was_lost_queues_its_jobs_once(
    server: Gateway, user: str
) -> None:
    proxy = AnswerLosingProxy(int(server.url.rsplit(":", 1)[1]), lose=2)
    try:
        with Client(proxy.url, user=user, backoff=0.01) as zypher:
            jobs = zypher.submit_many([{"input": n, "device_type": NOWHERE} for n in range(3)])
    finally:
        proxy.close()

    assert proxy.lost == 2
    with Client(server.url, user=user) as direct:
        assert sorted(listed.id for listed in direct.jobs()) == sorted(job.id for job in jobs)


def test_a_submit_with_a_key_given_twice_answers_the_same_job(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher:
        first = zypher.submit(1, device_type=NOWHERE, idempotency_key="order-42")
        again = zypher.submit(2, device_type=NOWHERE, idempotency_key="order-42")
        other = zypher.submit(1, device_type=NOWHERE, idempotency_key="order-43")
    assert again.id == first.id and again.input == 1
    assert other.id != first.id


def test_waiting_past_the_timeout_raises_and_leaves_the_job_queued(
    server: Gateway, user: str
) -> None:
    with Client(server.url, user=user) as zypher:
        job = zypher.submit(1, device_type=NOWHERE)
        with pytest.raises(Timeout) as timed_out:
            zypher.wait(job.id, timeout=0.3)
        assert timed_out.value.job is not None and timed_out.value.job.status == "queued"
        assert zypher.get(job.id).status == "queued"


def test_no_server_is_a_connection_failure_after_the_retries() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as zypher:
        with pytest.raises(ConnectionFailed):
            zypher.get(str(uuid.uuid4()))
        with pytest.raises(ConnectionFailed):
            zypher.submit(1)


def test_predict_answers_the_models_output_sync_and_async(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher:
        output = zypher.predict("hello")
        prediction_id = zypher.predict("later", sync=False)

        assert output["input"] == "hello" and 1000 <= int(output["result"]) <= 20000
        assert zypher.prediction(prediction_id, wait=True)["input"] == "later"
        assert zypher.get(prediction_id).kind == "predict"
        with pytest.raises(NotFound) as unknown:
            zypher.prediction(str(uuid.uuid4()))
        assert unknown.value.message == "Prediction ID not found."
