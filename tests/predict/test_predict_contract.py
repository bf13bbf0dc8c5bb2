"""The published /predict contract, every status code and body, through the real server.

gunicorn (the ASGI workers of `make run`) and, where a prediction must end,
`run_dispatcher`, on the test database. The mock model takes 50 to 100 ms here.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
import requests

from jobs.models import Job
from tests.conftest import TEST_HANDLERS
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
ACCEPTED = "Request received. Processing asynchronously."


def post_predict(gateway, body: Any, path: str = "/predict", **headers: str) -> requests.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(gateway.url + path, data=data, headers={**JSON, **headers}, timeout=30)


def until_ended(gateway, prediction_id: str, timeout: float = 30) -> requests.Response:
    """GET /predict/<id> until it no longer answers "still being processed" (400)."""
    path = f"/predict/{prediction_id}"
    # A list, since a Response of status >= 400 is falsy.
    return wait_until(
        lambda: [r for r in [gateway.get(path)] if r.status_code != 400],
        timeout,
        "the prediction to end",
    )[0]


def assert_error_body(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_async_mode_answers_202_then_400_while_queued_then_200_with_the_output(
    gateway, start_dispatcher
):
    ids = []
    for path, header in [("/predict", "true"), ("/predict/", "TRUE"), ("/predict", "1")]:
        response = post_predict(gateway, {"input": f"via {path}"}, path, **{"Async-Mode": header})
        assert response.status_code == 202, response.text
        body = response.json()
        assert list(body) == ["message", "prediction_id"]
        assert body["message"] == ACCEPTED
        ids.append(body["prediction_id"])
    # The header's name is case-insensitive and "yes" is on too.
    response = post_predict(gateway, {"input": "lower"}, **{"async-mode": "yes"})
    assert response.status_code == 202 and response.json()["message"] == ACCEPTED
    ids.append(response.json()["prediction_id"])

    # Nothing runs without a dispatcher: queued is "still being processed", not 404.
    for prediction_id in ids:
        for path in (f"/predict/{prediction_id}", f"/predict/{prediction_id}/"):
            response = gateway.get(path)
            assert assert_error_body(response, 400) == "Prediction is still being processed."
    assert Job.objects.filter(kind="predict", status="queued").count() == 4

    start_dispatcher(devices=1)
    for prediction_id in ids:
        done = until_ended(gateway, prediction_id)
        assert done.status_code == 200, done.text
        body = done.json()
        assert list(body) == ["prediction_id", "output"]
        assert body["prediction_id"] == prediction_id
        assert set(body["output"]) == {"input", "result"}
        assert body["output"]["result"].isdigit()
        assert 1000 <= int(body["output"]["result"]) <= 20000
    outputs = [gateway.get(f"/predict/{pid}/").json()["output"]["input"] for pid in ids]
    assert outputs == ["via /predict", "via /predict/", "via /predict", "lower"]


def test_sync_mode_answers_200_with_the_model_output_as_it_is(gateway, start_dispatcher):
    start_dispatcher(devices=1)
    for path, headers in [
        ("/predict", {}),
        ("/predict/", {}),
        ("/predict", {"Async-Mode": "false"}),
        ("/predict", {"Async-Mode": "False"}),
        ("/predict", {"Async-Mode": "0"}),
    ]:
        response = post_predict(
            gateway, {"input": "Sample input data for the model"}, path, **headers
        )
        assert response.status_code == 200, (path, headers, response.text)
        body = response.json()
        assert list(body) == ["input", "result"]
        assert body["input"] == "Sample input data for the model"
        assert body["result"].isdigit()
    jobs = Job.objects.filter(kind="predict")
    assert jobs.count() == 5 and all(job.status == "succeeded" for job in jobs)
    assert {job.owner.username for job in jobs} == {"anonymous"}


def test_unknown_and_malformed_prediction_ids_answer_404(gateway):
    for path in (
        f"/predict/{uuid.uuid4()}",
        f"/predict/{uuid.uuid4()}/",
        "/predict/not-a-uuid",
        "/predict/12345/",
    ):
        assert assert_error_body(gateway.get(path), 404) == "Prediction ID not found."
    # A job of another kind is not a prediction.
    job = gateway.post("/api/jobs/", {"user_id": "u", "kind": "noop", "input": 1}).json()
    assert (
        assert_error_body(gateway.get(f"/predict/{job['id']}"), 404) == "Prediction ID not found."
    )


def test_bad_requests_answer_400_413_415_with_an_error_naming_the_problem(gateway):
    message = assert_error_body(
        post_predict(gateway, {"input": "x"}, **{"Async-Mode": "maybe"}), 400
    )
    assert "'maybe'" in message and "true" in message and "false" in message
    assert "input" in assert_error_body(post_predict(gateway, {"inputs": "x"}), 400)
    assert "must be a string" in assert_error_body(post_predict(gateway, {"input": 42}), 400)
    assert "must be a string" in assert_error_body(post_predict(gateway, {"input": None}), 400)
    assert "Malformed JSON" in assert_error_body(post_predict(gateway, '{"input": '), 400)
    assert "JSON object" in assert_error_body(post_predict(gateway, '["input"]'), 400)
    assert "empty" in assert_error_body(post_predict(gateway, ""), 400)
    assert "user_id" in assert_error_body(
        post_predict(gateway, {"input": "x", "user_id": "a b"}), 400
    )
    form = requests.post(gateway.url + "/predict", data={"input": "x"}, timeout=10)
    assert "Content-Type" in assert_error_body(form, 415)
    huge = post_predict(gateway, {"input": "x" * (8 * 1024 * 1024)})
    assert "over the limit" in assert_error_body(huge, 413)
    assert "POST" in assert_error_body(gateway.get("/predict"), 405)
    assert "GET" in assert_error_body(
        requests.delete(gateway.url + f"/predict/{uuid.uuid4()}"), 405
    )
    assert Job.objects.count() == 0  # nothing was queued by a refused request


def test_a_prediction_that_fails_in_the_model_answers_500_sync_and_on_get(
    gateway, start_dispatcher
):
    handlers = {**TEST_HANDLERS, "predict": "tests.support.handlers:boom"}
    start_dispatcher(devices=1, ZYPHER_HANDLERS=json.dumps(handlers))
    message = assert_error_body(post_predict(gateway, {"input": "bad"}), 500)
    assert "Prediction failed" in message and "ValueError: boom on 'bad'" in message

    prediction_id = post_predict(gateway, {"input": "bad"}, **{"Async-Mode": "true"}).json()[
        "prediction_id"
    ]
    response = until_ended(gateway, prediction_id)
    assert response.status_code == 500
    body = response.json()
    assert list(body) == ["prediction_id", "error"]
    assert body["prediction_id"] == prediction_id and "ValueError: boom on 'bad'" in body["error"]


def test_a_cancelled_prediction_answers_410_to_the_waiting_request_and_on_get(gateway):
    answers: list[requests.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(post_predict(gateway, {"input": "c"})))
    waiting.start()
    job = wait_until(lambda: Job.objects.filter(kind="predict").first(), 10, "the job to be queued")
    cancel = gateway.post(f"/api/jobs/{job.public_id}/cancel/", None)
    assert cancel.status_code == 200, cancel.text
    waiting.join(timeout=15)
    assert answers, "the waiting request did not return after the cancel"
    expected = {"prediction_id": str(job.public_id), "error": "Prediction was cancelled."}
    assert answers[0].status_code == 410 and answers[0].json() == expected
    response = gateway.get(f"/predict/{job.public_id}")
    assert response.status_code == 410 and response.json() == expected


def test_the_owner_is_the_named_user_the_x_user_id_header_or_anonymous(gateway):
    named = post_predict(gateway, {"input": "a", "user_id": "alice"}, **{"Async-Mode": "1"})
    header = post_predict(gateway, {"input": "b"}, **{"Async-Mode": "1", "X-User-Id": "bob"})
    nobody = post_predict(gateway, {"input": "c"}, **{"Async-Mode": "1"})
    owners = [
        Job.objects.get(public_id=r.json()["prediction_id"]).owner.username
        for r in (named, header, nobody)
    ]
    assert owners == ["alice", "bob", "anonymous"]


def test_a_repeated_idempotency_key_returns_the_same_prediction(gateway):
    first = post_predict(gateway, {"input": "a"}, **{"Async-Mode": "1", "Idempotency-Key": "k1"})
    again = post_predict(gateway, {"input": "a"}, **{"Async-Mode": "1", "Idempotency-Key": "k1"})
    assert first.json()["prediction_id"] == again.json()["prediction_id"]
    assert Job.objects.filter(kind="predict").count() == 1


def test_the_rest_of_the_api_keeps_its_json_errors_under_the_asgi_server(gateway):
    assert gateway.get("/api/nope/").json() == {"error": "Not found: /api/nope/"}
    assert gateway.get("/api/health/").json() == {"status": "ok"}
    bad = gateway.post("/api/jobs/", {"user_id": "u", "input": 1, "priority": 1000})
    assert bad.status_code == 400 and "priority" in bad.json()
    job = gateway.post("/api/jobs/", {"user_id": "u", "kind": "noop", "input": 1})
    assert job.status_code == 201 and gateway.get(job.json()["url"]).json()["status"] == "queued"


class TestTokenMode:
    """With open mode off, a prediction belongs to the token's user and only it reads it."""

    @pytest.fixture
    def subprocess_env(self, subprocess_env: dict[str, str]) -> dict[str, str]:
        return {**subprocess_env, "ZYPHER_OPEN_MODE": "0"}

    def test_predictions_need_a_token_and_are_visible_to_their_owner_only(self, gateway):
        from rest_framework.authtoken.models import Token

        from jobs.models import User

        alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
        alice_token, bob_token = Token.objects.create(user=alice), Token.objects.create(user=bob)

        message = assert_error_body(post_predict(gateway, {"input": "x"}), 401)
        assert "Token" in message
        bad = post_predict(gateway, {"input": "x"}, Authorization="Token nope")
        assert_error_body(bad, 401)

        as_alice = {"Authorization": f"Token {alice_token.key}", "Async-Mode": "true"}
        response = post_predict(gateway, {"input": "mine"}, **as_alice)
        assert response.status_code == 202, response.text
        prediction_id = response.json()["prediction_id"]
        assert Job.objects.get(public_id=prediction_id).owner == alice

        path = f"/predict/{prediction_id}"
        as_bob = {"Authorization": f"Token {bob_token.key}"}
        assert assert_error_body(gateway.get(path, headers=as_bob), 404) == (
            "Prediction ID not found."
        )
        assert_error_body(gateway.get(path), 401)
        mine = gateway.get(path, headers={"Authorization": f"Token {alice_token.key}"})
        assert assert_error_body(mine, 400) == "Prediction is still being processed."
        forbidden = post_predict(gateway, {"input": "x", "user_id": "alice"}, **as_bob)
        assert "cannot act for" in assert_error_body(forbidden, 403)
