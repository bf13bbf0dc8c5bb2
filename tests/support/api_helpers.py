"""Plain helpers for the API tests: endpoint paths, a JSON submit, a client with a token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs.models import User

if TYPE_CHECKING:
    # What the test client answers: a response with .json() and .data (a name of the stubs).
    from rest_framework.response import _MonkeyPatchedResponse as TestResponse

JOBS_URL = "/api/jobs/"
USERS_URL = "/api/users/"
TOKEN_URL = "/api/token/"


def client_with_token(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=user).key}")
    return client


def submit(client: APIClient, body: Any, **headers: str) -> TestResponse:
    """POST a job (an object) or jobs (a list) as JSON."""
    return client.post(JOBS_URL, body, format="json", headers=headers or None)
