"""Who may see and do what in the API: one place for every view, DRF's and the others.

* `acting_user`: the account a request submits for (its token's user; staff act for any
  `user_id`; in open mode a request names its user).
* `reader_of` and `Job.objects.visible_to(reader)` (`visible_jobs`): the jobs (and
  programs) a request may see: staff and open mode see every one, a token's user their own.
* Permission classes for views whose every method needs the same access: `ReadsJobs`,
  `ReadsAccount` (listed by views as `JOB_READERS`, `ACCOUNT_READERS`).
* `read_idempotency_key`: the `Idempotency-Key` header, the same limit everywhere.

The error texts are the API's contract (tests/api checks them): keep them as they are.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, AllowAny, BasePermission
from rest_framework.request import Request

from jobs.api.serializers import USER_ID_PATTERN, USER_ID_RULE
from jobs.models import Job, User

SEND_TOKEN = "Send 'Authorization: Token <key>' (POST /api/token/ issues one)."
MAX_IDEMPOTENCY_KEY = 200


def acting_user(request: Request, named_user_id: str | None) -> User:
    """The account a request acts for.

    A token's own user; a staff token may act for any `user_id` (created on first use,
    for an application backend submitting for its own end users). In open mode a request
    without a token names its user (`user_id` or `X-User-Id`), or is `anonymous`.
    """
    user: User
    if request.user.is_authenticated:
        if not named_user_id or named_user_id == request.user.username:
            return _user(request)
        if not request.user.is_staff:
            raise exceptions.PermissionDenied(
                f"This token belongs to {request.user.username!r} and cannot act for {named_user_id!r}."
            )
        user, _ = User.objects.get_or_create(username=named_user_id)
    elif settings.ZYPHER_OPEN_MODE:
        name = named_user_id or request.headers.get("X-User-Id") or "anonymous"
        if not re.fullmatch(USER_ID_PATTERN, name):
            raise exceptions.ValidationError({"user_id": [USER_ID_RULE]})
        user, _ = User.objects.get_or_create(username=name)
    else:
        raise exceptions.NotAuthenticated(SEND_TOKEN)
    if not user.is_active:
        raise exceptions.PermissionDenied(
            f"User {user.username!r} is deactivated and cannot submit jobs."
        )
    return user


def reader_of(request: Request) -> User | None:
    """Whose jobs and programs `request` may see: None for every owner's (staff; anyone
    in open mode, where an unguessable id is the secret), else the token's own user.
    Outside open mode a request without a token is refused (401)."""
    if request.user.is_authenticated:
        return None if request.user.is_staff else _user(request)
    if settings.ZYPHER_OPEN_MODE:
        return None
    raise exceptions.NotAuthenticated(SEND_TOKEN)


def visible_jobs(request: Request) -> QuerySet[Job]:
    """The jobs `request` may see, with their owners."""
    return Job.objects.select_related("owner").visible_to(reader_of(request))


def _user(request: Request) -> User:
    # AUTH_USER_MODEL is jobs.User: an authenticated request's user is one.
    assert isinstance(request.user, User)
    return request.user


class ReadsJobs(BasePermission):
    """Views that read or act on existing jobs or programs: a token, or open mode.
    Which rows the request then sees is `Job.objects.visible_to(reader_of(request))`."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method == "OPTIONS":  # the endpoint's description names no job
            return True
        reader_of(request)  # raises NotAuthenticated, phrased as everywhere else
        return True


class ReadsAccount(BasePermission):
    """`/api/users/<user_id>/`: a user reads their own account; staff read any account and
    change weights."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method == "OPTIONS":  # the endpoint's description names no user
            return True
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated("Send 'Authorization: Token <key>'.")
        if request.user.is_staff:
            return True
        if request.method not in SAFE_METHODS:
            raise exceptions.PermissionDenied("Only staff may change a weight.")
        if request.user.username != view.kwargs.get("user_id"):
            raise exceptions.PermissionDenied("You may only read your own account.")
        return True


# What views list as `permission_classes`. AllowAny first changes nothing for DRF (every
# class must agree) but keeps the published schema as it was: drf-spectacular marks a
# token optional only when it sees AllowAny itself, and in open mode it is optional.
JOB_READERS: list[type[BasePermission]] = [AllowAny, ReadsJobs]
ACCOUNT_READERS: list[type[BasePermission]] = [AllowAny, ReadsAccount]


class IdempotencyKeyTooLong(exceptions.ValidationError):
    def __init__(self) -> None:
        super().__init__({"Idempotency-Key": [f"At most {MAX_IDEMPOTENCY_KEY} characters."]})


def read_idempotency_key(request: HttpRequest | Request) -> str | None:
    """The request's `Idempotency-Key` (None when absent or empty); IdempotencyKeyTooLong
    (a 400) above MAX_IDEMPOTENCY_KEY characters."""
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise IdempotencyKeyTooLong()
    return key
