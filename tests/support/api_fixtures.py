"""Fixtures for the API tests: clients, users with tokens, the two auth modes.

Test modules load these with `pytest_plugins = ["tests.support.api_fixtures"]` (conftest.py has
another owner) and never import this module themselves (that would stop pytest from
rewriting its asserts); plain helpers live in `tests.support.api_helpers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.signals import request_started
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs import queue
from jobs.models import User


@pytest.fixture(autouse=True)
def forget_cached_pool_ids() -> Iterator[None]:
    """`jobs.queue` caches pool row ids per process; a rolled-back test leaves them stale."""
    queue._pool_ids.clear()
    yield
    queue._pool_ids.clear()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def open_mode(settings: Any) -> None:
    """Requests may name their user without a token (the original service contract)."""
    settings.ZYPHER_OPEN_MODE = True


@pytest.fixture
def token_mode(settings: Any) -> None:
    """Every request authenticates with a token."""
    settings.ZYPHER_OPEN_MODE = False


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    """Create a user (with an API token) by name."""

    def make(
        username: str,
        *,
        weight: float = 1.0,
        is_staff: bool = False,
        is_superuser: bool = False,
        is_active: bool = True,
        password: str | None = None,
    ) -> User:
        user = User(
            username=username,
            weight=weight,
            is_staff=is_staff,
            is_superuser=is_superuser,
            is_active=is_active,
        )
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
        Token.objects.create(user=user)
        return user

    return make


@pytest.fixture
def django_answers() -> Iterator[list[object]]:
    """The requests Django handled (its request_started signal)."""
    seen: list[object] = []

    def note(sender: object, **kwargs: object) -> None:
        seen.append(sender)

    request_started.connect(note)
    yield seen
    request_started.disconnect(note)
