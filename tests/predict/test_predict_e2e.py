"""/predict end to end with real processes: gunicorn (ASGI workers) and run_dispatcher.

The mock model's delay is set in milliseconds through ZYPHER_PREDICT_DELAY in the
subprocesses' environment.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from django.utils import timezone

from jobs.models import Job
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}


def predict_sync(url: str, text: str, timeout: float = 60, **body: str) -> requests.Response:
    return requests.post(
        url + "/predict", data=json.dumps({"input": text, **body}), headers=JSON, timeout=timeout
    )


def test_sync_and_async_predictions_are_jobs_run_by_the_dispatcher(gateway, start_dispatcher):
    start_dispatcher(devices=1, ZYPHER_PREDICT_DELAY="0.2,0.2")
    started = time.monotonic()
    sync = predict_sync(gateway.url, "sync please", user_id="carol")
    elapsed = time.monotonic() - started
    assert sync.status_code == 200, sync.text
    assert sync.json()["input"] == "sync please"
    assert elapsed >= 0.2  # the model ran: the request waited for it

    accepted = requests.post(
        gateway.url + "/predict",
        data=json.dumps({"input": "later", "user_id": "carol"}),
        headers={**JSON, "Async-Mode": "true"},
        timeout=5,
    )
    assert accepted.status_code == 202
    prediction_id = accepted.json()["prediction_id"]
    body = wait_until(
        lambda: (r := gateway.get(f"/predict/{prediction_id}")).status_code == 200 and r.json(),
        30,
        "the asynchronous prediction",
    )
    assert body["output"]["input"] == "later"

    jobs = list(Job.objects.filter(kind="predict").order_by("id"))
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert all(job.owner.username == "carol" for job in jobs)
    assert all(job.device.startswith("dispatcher0-cpu-") and job.duration >= 0.2 for job in jobs)
    assert jobs[0].result == sync.json() and jobs[1].result == body["output"]
    # Predictions are jobs: the jobs API shows them too.
    assert gateway.get(f"/api/jobs/{prediction_id}/").json()["kind"] == "predict"


def test_two_sync_predictions_run_at_once_on_two_devices(gateway, start_dispatcher):
    model_seconds = 1.5
    start_dispatcher(devices=2, ZYPHER_PREDICT_DELAY=f"{model_seconds},{model_seconds}")
    assert predict_sync(gateway.url, "warm-up").status_code == 200  # workers are up

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda text: predict_sync(gateway.url, text), ["a", "b"]))
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["input"] for a in answers] == ["a", "b"]
    runs = list(
        Job.objects.filter(input__in=["a", "b"]).values_list("device", "started_at", "finished_at")
    )
    assert len({device for device, _, _ in runs}) == 2
    # Waiting requests never hold a device: both models ran at the same time, which the
    # jobs' own times show (not the wall clock of a loaded machine).
    assert max(started for _, started, _ in runs) < min(finished for _, _, finished in runs)


def test_a_client_that_disconnects_while_waiting_does_not_cancel_its_prediction(
    gateway, start_dispatcher
):
    start_dispatcher(devices=1, ZYPHER_PREDICT_DELAY="1,1")
    host, port = urlsplit(gateway.url).hostname, urlsplit(gateway.url).port
    body = json.dumps({"input": "gone", "user_id": "leaver"}).encode()
    with socket.create_connection((host, port), timeout=5) as client:
        client.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        job = wait_until(
            lambda: Job.objects.filter(owner__username="leaver").first(), 10, "the job"
        )
        wait_until(lambda: Job.objects.get(pk=job.pk).status == "running", 10, "the model to start")
    # The client has gone while its prediction runs; the job goes on to the end.
    job = wait_until(
        lambda: (
            (j := Job.objects.get(pk=job.pk)).status in {"succeeded", "failed", "cancelled"} and j
        ),
        20,
        "the job to end",
    )
    assert job.status == "succeeded"
    response = gateway.get(f"/predict/{job.public_id}")
    assert response.status_code == 200
    assert response.json() == {"prediction_id": str(job.public_id), "output": job.result}
    assert job.result["input"] == "gone"


class TestWaitLimit:
    @pytest.fixture
    def subprocess_env(self, subprocess_env: dict[str, str]) -> dict[str, str]:
        return {**subprocess_env, "ZYPHER_PREDICT_WAIT_SECONDS": "0.5"}

    def test_a_sync_wait_over_the_limit_answers_202_with_the_prediction_id_to_poll(
        self, gateway, start_dispatcher
    ):
        start_dispatcher(devices=1, ZYPHER_PREDICT_DELAY="2,2")
        started = time.monotonic()
        response = predict_sync(gateway.url, "slow")
        elapsed, answered_at = time.monotonic() - started, timezone.now()
        assert response.status_code == 202, response.text
        assert elapsed >= 0.5  # never before the wait limit
        body = response.json()
        assert list(body) == ["message", "prediction_id"] and "poll" in body["message"]
        assert response.headers["Location"] == f"/predict/{body['prediction_id']}"
        done = wait_until(
            lambda: (
                (r := gateway.get(f"/predict/{body['prediction_id']}")).status_code == 200
                and r.json()
            ),
            20,
            "the prediction to finish after the 202",
        )
        assert done["output"]["input"] == "slow"
        # ...and at the limit, not when the model ended: the job's own end came after the
        # answer (the database's times, not a wall-clock bound on a loaded machine).
        finished_at = Job.objects.get(public_id=body["prediction_id"]).finished_at
        assert finished_at is not None and finished_at > answered_at


def test_while_200_sync_predictions_wait_fast_endpoints_still_answer_promptly(
    gateway, start_dispatcher
):
    waiting = 200
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def wait_for_one(index: int) -> None:
        response = predict_sync(gateway.url, f"p{index}", timeout=120)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=wait_for_one, args=(i,)) for i in range(waiting)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: Job.objects.filter(kind="predict").count() == waiting, 60, "all to be queued"
    )
    time.sleep(0.5)
    assert not answers  # no dispatcher yet: all 200 are waiting

    queued_id = Job.objects.filter(kind="predict").values_list("public_id", flat=True)[0]
    latencies = []
    for index in range(20):
        started = time.monotonic()
        status = gateway.get(f"/predict/{queued_id}").status_code
        submitted = gateway.post("/api/jobs/", {"user_id": "fast", "kind": "noop", "input": index})
        latencies.append(time.monotonic() - started)
        assert status == 400 and submitted.status_code == 201
    assert statistics.median(latencies) < 0.25, latencies
    assert not answers

    start_dispatcher(devices=2, ZYPHER_PREDICT_DELAY="0.001,0.001")
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == waiting
    assert all(a.status_code == 200 for a in answers)
    assert sorted(a.json()["input"] for a in answers) == sorted(f"p{i}" for i in range(waiting))
