"""Weights are bounded to 0.001..1000 (issue 13): outside it is a 400 that names the range,
through the API and the admin alike, and the database refuses it too."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from jobs.models import User
from tests.support.api_helpers import client_with_token

pytestmark = pytest.mark.django_db

OUTSIDE = [0, 0.0009, -1, 1000.5, 1e308]


@pytest.fixture
def staff() -> User:
    user = User.objects.create(username="operator", is_staff=True, is_superuser=True)
    user.set_password("operator-password-1")
    user.save()
    Token.objects.create(user=user)
    return user


@pytest.mark.parametrize("weight", OUTSIDE)
def test_creating_a_user_with_a_weight_outside_the_range_is_a_400_naming_it(staff, weight) -> None:
    response = client_with_token(staff).post(
        "/api/users/", {"user_id": "carol", "weight": weight}, format="json"
    )
    assert response.status_code == 400
    assert "between 0.001 and 1000" in str(response.json())
    assert not User.objects.filter(username="carol").exists()


@pytest.mark.parametrize("weight", OUTSIDE)
def test_changing_a_weight_to_outside_the_range_is_a_400_and_keeps_the_old(staff, weight) -> None:
    User.objects.create(username="alice", weight=2.0)
    response = client_with_token(staff).patch(
        "/api/users/alice/", {"weight": weight}, format="json"
    )
    assert response.status_code == 400
    assert "between 0.001 and 1000" in str(response.json())
    assert User.objects.get(username="alice").weight == 2.0


@pytest.mark.parametrize("weight", [0.001, 1, 1000])
def test_the_ends_of_the_range_are_accepted(staff, weight) -> None:
    client = client_with_token(staff)
    created = client.post("/api/users/", {"user_id": "carol", "weight": weight}, format="json")
    assert created.status_code == 201, created.json()
    assert User.objects.get(username="carol").weight == weight


def test_the_admin_user_list_refuses_a_weight_outside_the_range(staff) -> None:
    alice = User.objects.create(username="alice", weight=2.0)
    client = Client()
    client.force_login(staff)
    changelist = reverse("admin:jobs_user_changelist")
    users = list(client.get(changelist).context["cl"].result_list)
    data = {
        "form-TOTAL_FORMS": str(len(users)),
        "form-INITIAL_FORMS": str(len(users)),
        "_save": "Save",
    }
    for index, listed in enumerate(users):
        data[f"form-{index}-id"] = str(listed.pk)
        data[f"form-{index}-weight"] = "5000" if listed.pk == alice.pk else str(listed.weight)
    response = client.post(changelist, data)
    assert response.status_code == 200  # the list again, with the error
    assert "less than or equal to 1000" in response.content.decode()
    alice.refresh_from_db()
    assert alice.weight == 2.0


def test_the_database_refuses_a_weight_outside_the_range() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(username="zed", weight=1e6)
