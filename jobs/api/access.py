"""Who may see and do what in the API: one place for every view, DRF's and the others.

* `acting_owner`: the account a request submits for (its token's user; staff act for any
  `user_id`; in open mode a request names its user), found or created by the submit
  itself; `acting_user` the same as a row, for routes that need it first.
* `reader_of` and `Job.objects.visible_to(reader)` (`visible_jobs`): the jobs (and
  programs) a request may see: staff and open mode see every one, a token's user their own.
* Permission classes for views whose every method needs the same access: `ReadsJobs`,
  `ReadsAccount` (listed by views as `JOB_READERS`, `ACCOUNT_READERS`).
* `read_idempotency_key`: the `Idempotency-Key` header, the same limit everywhere.

Operators' rights are Django permissions, not `is_staff` (issue 17): `is_staff` only lets
an account log into the admin. The roles are groups created by the migrations
(`OPERATOR_GROUP`, `REGISTRAR_GROUP`); superusers hold every permission. Only a
superuser may grant staff or superuser status or deactivate a superuser (`may_deactivate`,
`GrantsNoStaff`; the admin enforces the same in `jobs.admin`).

The error texts are the API's contract (tests/api checks them): keep them as they are.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.fields import BooleanField
from rest_framework.permissions import SAFE_METHODS, AllowAny, BasePermission
from rest_framework.request import Request

from jobs.api.serializers import USER_ID_PATTERN, USER_ID_RULE
from jobs.models import Job, User
from jobs.queue import NamedUser, OwnerDeactivated

SEND_TOKEN = "Send 'Authorization: Token <key>' (POST /api/token/ issues one)."
MAX_IDEMPOTENCY_KEY = 200

# The roles (auth groups, created by jobs' and devices' `*_operator_permissions` migrations).
OPERATOR_GROUP = "operator"
REGISTRAR_GROUP = "device registrar"

# The permissions the API checks (app_label.codename).
REMOVE_FROM_QUEUE = "jobs.remove_from_queue"
CHANGE_WEIGHT = "jobs.change_weight"
VIEW_DASHBOARD = "jobs.view_dashboard"
ACT_FOR_USERS = "jobs.act_for_users"
VIEW_ALL_JOBS = "jobs.view_job"
VIEW_ACCOUNTS = "jobs.view_user"
ADD_USERS = "jobs.add_user"


# What each role holds (the migrations create the same; `ensure_roles` restores them).
# Other apps add their own permissions to a role from their `ready()` (`grant_to_role`).
ROLES: dict[str, list[str]] = {
    OPERATOR_GROUP: [
        "jobs.remove_from_queue",
        "jobs.change_weight",
        "jobs.view_dashboard",
        "jobs.view_user",
        "jobs.view_job",
        "jobs.change_job",
        "jobs.view_fairpool",
        "jobs.view_fairshareaccount",
    ],
    REGISTRAR_GROUP: [],
}


def grant_to_role(role: str, permissions: list[str]) -> None:
    """Add permissions (app_label.codename) to what `role` holds."""
    held = ROLES.setdefault(role, [])
    held.extend(p for p in permissions if p not in held)


def ensure_roles() -> None:
    """Create the role groups with at least their permissions (`ensure_admin` runs it;
    what an administrator added to a group stays)."""
    for name, permissions in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        for permission in permissions:
            app_label, codename = permission.split(".")
            group.permissions.add(
                *Permission.objects.filter(content_type__app_label=app_label, codename=codename)
            )


def holds(user: object, permission: str) -> bool:
    """Whether a request's `user` (maybe anonymous) holds `permission`: through a group,
    directly, or as an active superuser (Django's ModelBackend)."""
    return isinstance(user, User) and user.has_perm(permission)


def may_deactivate(actor: object, target: User) -> bool:
    """Only a superuser deactivates a superuser: an operator cannot lock out those who
    can take the operator role away."""
    return not target.is_superuser or bool(getattr(actor, "is_superuser", False))


def acting_owner(request: Request, named_user_id: str | None) -> User | NamedUser:
    """The account a request acts for, without a query: the token's own user, or the
    user it names (`NamedUser`), which the submit finds or creates in the same call
    that queues its jobs (`jobs.queue.submit_jobs`; a deactivated one is refused there).

    A token's own user; a token holding `jobs.act_for_users` may act for any `user_id`
    (created on first use, for an application backend submitting for its own end users). In open mode a request
    without a token names its user (`user_id` or `X-User-Id`), or is `anonymous`.
    """
    if request.user.is_authenticated:
        if not named_user_id or named_user_id == request.user.username:
            return _user(request)
        if not holds(request.user, ACT_FOR_USERS):
            raise exceptions.PermissionDenied(
                f"This token belongs to {request.user.username!r} and cannot act for {named_user_id!r}."
            )
        return NamedUser(named_user_id)
    if settings.ZYPHER_OPEN_MODE:
        name = named_user_id or request.headers.get("X-User-Id") or "anonymous"
        if not re.fullmatch(USER_ID_PATTERN, name):
            raise exceptions.ValidationError({"user_id": [USER_ID_RULE]})
        return NamedUser(name)
    raise exceptions.NotAuthenticated(SEND_TOKEN)


def acting_user(request: Request, named_user_id: str | None) -> User:
    """`acting_owner` as a user row: a named user is found or created now, and refused
    (403) when deactivated. For routes that need the row before they submit."""
    owner = acting_owner(request, named_user_id)
    if isinstance(owner, User):
        return owner
    user, _ = User.objects.get_or_create(username=owner.username)
    if not user.is_active:
        raise exceptions.PermissionDenied(str(OwnerDeactivated(user.username)))
    return user


def reader_of(request: Request) -> User | None:
    """Whose jobs and programs `request` may see: None for every owner's (`jobs.view_job`:
    operators, backends; anyone in open mode, where an unguessable id is the secret), else
    the token's own user. Outside open mode a request without a token is refused (401)."""
    if request.user.is_authenticated:
        return None if holds(request.user, VIEW_ALL_JOBS) else _user(request)
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
    """`/api/users/<user_id>/`: a user reads their own account; `jobs.view_user` reads
    any; `jobs.change_weight` changes weights (operators)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method == "OPTIONS":  # the endpoint's description names no user
            return True
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated("Send 'Authorization: Token <key>'.")
        if request.method not in SAFE_METHODS:
            if holds(request.user, CHANGE_WEIGHT):
                return True
            raise exceptions.PermissionDenied(
                f"Changing a weight needs the {CHANGE_WEIGHT} permission (the operator role)."
            )
        if request.user.username == view.kwargs.get("user_id") or holds(
            request.user, VIEW_ACCOUNTS
        ):
            return True
        raise exceptions.PermissionDenied("You may only read your own account.")


def _is_true(value: Any) -> bool:
    # Read by the very field the serializers use ("True", "ON", 1.0 are true to it): a
    # spelling this check missed would pass it and then be acted on. What the field
    # refuses, the serializer refuses too (a 400).
    try:
        return BooleanField().to_internal_value(value) is True
    except exceptions.ValidationError:
        return False


class NeedsPermission(BasePermission):
    """A view whose every method needs `permission` (OPTIONS aside): 401 without a token
    (DRF's NotAuthenticated), 403 naming the permission otherwise."""

    permission: ClassVar[str]
    role: ClassVar[str]

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method == "OPTIONS":
            return True
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated(SEND_TOKEN)
        if not holds(request.user, self.permission):
            raise exceptions.PermissionDenied(
                f"This needs the {self.permission} permission ({self.role})."
            )
        return True


class ReadsDashboard(NeedsPermission):
    permission = VIEW_DASHBOARD
    role = "the operator role"


class RemovesFromQueue(NeedsPermission):
    """`jobs.remove_from_queue`; deactivating a superuser also needs a superuser."""

    permission = REMOVE_FROM_QUEUE
    role = "the operator role"

    def has_permission(self, request: Request, view: Any) -> bool:
        super().has_permission(request, view)
        data = request.data if request.method == "POST" else None
        if isinstance(data, dict) and _is_true(data.get("deactivate")):
            target = User.objects.filter(username=view.kwargs.get("user_id")).first()
            if target is not None and not may_deactivate(request.user, target):
                raise exceptions.PermissionDenied("Only a superuser may deactivate a superuser.")
        return True


class CreatesUsers(NeedsPermission):
    """`jobs.add_user`; creating a staff account also needs a superuser (a staff flag
    is the admin's door: only superusers hand it out)."""

    permission = ADD_USERS
    role = "a superuser's grant"

    def has_permission(self, request: Request, view: Any) -> bool:
        super().has_permission(request, view)
        data = request.data
        if (
            isinstance(data, dict)
            and _is_true(data.get("is_staff"))
            and not getattr(request.user, "is_superuser", False)
        ):
            raise exceptions.PermissionDenied("Only a superuser may create a staff account.")
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
