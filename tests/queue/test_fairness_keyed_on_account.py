"""Fairness is keyed on the account: more tokens or higher priorities buy no extra share."""

from __future__ import annotations

from collections import Counter

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs.models import User
from jobs.queue import claim_next, finish_job

pytestmark = pytest.mark.django_db


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def test_a_user_submitting_through_several_tokens_and_priorities_gets_only_its_weighted_share(
    settings,
):
    settings.ZYPHER_OPEN_MODE = False
    greedy = User.objects.create(username="greedy", weight=1)
    modest = User.objects.create(username="modest", weight=1)
    backend = User.objects.create(username="backend", is_staff=True, is_superuser=True)
    own, on_behalf = client_for(greedy), client_for(backend)
    for priority in (100, -100, 50):
        body = [{"kind": "noop", "input": i, "priority": priority} for i in range(40)]
        assert own.post("/api/jobs/", body, format="json").status_code == 201
        behalf = [{**item, "user_id": "greedy"} for item in body]
        assert on_behalf.post("/api/jobs/", behalf, format="json").status_code == 201
    modest_jobs = [{"kind": "noop", "input": i} for i in range(60)]
    assert client_for(modest).post("/api/jobs/", modest_jobs, format="json").status_code == 201

    served: Counter[str] = Counter()
    for _ in range(100):
        claim = claim_next("cpu", "device")
        assert claim is not None
        served[claim.owner] += 1
        finish_job(claim, succeeded=True, duration=1.0)
    assert served["greedy"] == 50 and served["modest"] == 50


def test_weights_split_the_device_time_in_proportion(settings):
    light = User.objects.create(username="light", weight=1)
    heavy = User.objects.create(username="heavy", weight=3)
    for user in (light, heavy):
        body = [{"kind": "noop", "input": i} for i in range(200)]
        assert client_for(user).post("/api/jobs/", body, format="json").status_code == 201
    served: Counter[str] = Counter()
    for _ in range(200):
        claim = claim_next("cpu", "device")
        assert claim is not None
        served[claim.owner] += 1
        finish_job(claim, succeeded=True, duration=2.0)
    assert served == {"heavy": 150, "light": 50}
