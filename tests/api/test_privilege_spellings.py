"""Only a superuser grants staff or deactivates a superuser, however the flag is spelled.

The serializers read booleans as DRF's BooleanField does ("True", "YES", "On" and 1.0
are all true to it); the superuser checks must read them the same way, or a spelling
the check misses passes it and the serializer then acts on it (issue 17).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs.api.access import OPERATOR_GROUP, REGISTRAR_GROUP, ensure_roles
from jobs.models import User

pytest_plugins = ["tests.support.api_fixtures"]

TRUE_SPELLINGS: list[Any] = ["True", "TRUE", "Yes", "ON", "T", 1.0]


def _client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=user).key}")
    return client


@pytest.fixture
def operator(token_mode: None, make_user: Callable[..., User]) -> User:
    ensure_roles()
    user = make_user("operator", is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATOR_GROUP))
    return user


@pytest.mark.parametrize("spelling", TRUE_SPELLINGS, ids=repr)
def test_an_operator_cannot_deactivate_a_superuser_by_spelling_true_differently(
    spelling: Any, operator: User, make_user: Callable[..., User]
) -> None:
    root = make_user("root", is_staff=True, is_superuser=True)
    response = _client(operator).post(
        "/api/users/root/remove-from-queue/", {"deactivate": spelling}, format="json"
    )
    assert response.status_code == 403, response.content
    root.refresh_from_db()
    assert root.is_active


@pytest.mark.parametrize("spelling", TRUE_SPELLINGS, ids=repr)
def test_a_non_superuser_who_adds_users_cannot_create_staff_by_spelling_true_differently(
    spelling: Any, token_mode: None, make_user: Callable[..., User]
) -> None:
    adder = make_user("adder", is_staff=True)
    adder.user_permissions.add(Permission.objects.get(codename="add_user"))
    response = _client(adder).post(
        "/api/users/", {"user_id": "mallory", "weight": 1, "is_staff": spelling}, format="json"
    )
    assert response.status_code == 403, response.content
    assert not User.objects.filter(username="mallory", is_staff=True).exists()


def test_a_non_superuser_who_edits_accounts_cannot_take_over_a_role_holder_without_staff(
    token_mode: None, make_user: Callable[..., User]
) -> None:
    """A registrar's or operator's account need not be staff (an API-only role holder);
    setting its password would hand its rights to whoever edits accounts."""
    ensure_roles()
    editor = make_user("editor", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(codename__in=["change_user", "view_user"])
    )
    holder = make_user("fleet-registrar")
    holder.groups.add(Group.objects.get(name=REGISTRAR_GROUP))
    browser = Client()
    browser.force_login(editor)
    page = f"/admin/jobs/user/{holder.pk}/password/"
    assert browser.get(page).status_code == 403
    browser.post(page, {"password1": "taken-over-42x", "password2": "taken-over-42x"})
    holder.refresh_from_db()
    assert not holder.check_password("taken-over-42x")
