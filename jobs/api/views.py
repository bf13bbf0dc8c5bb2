"""The jobs and users API: thin views over `jobs.queue`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from jobs.api.access import (
    ACCOUNT_READERS,
    JOB_READERS,
    CreatesUsers,
    acting_owner,
    read_idempotency_key,
    visible_jobs,
)
from jobs.api.errors import SUBMIT_REFUSALS
from jobs.api.pagination import JobListPagination
from jobs.api.parsers import JSONParser
from jobs.api.serializers import (
    USER_ID_PATTERN,
    USER_ID_RULE,
    JobDetailSerializer,
    JobSerializer,
    JobSubmitSerializer,
    UserCreateSerializer,
    UserSerializer,
    UserWeightSerializer,
    lean_submit_item,
    list_limit_error,
    user_summary,
)
from jobs.api.throttles import SUBMIT_THROTTLES
from jobs.models import Job, JobStatus, User
from jobs.programs import CallbackNotAllowed, check_callback_url, submit_with_callbacks
from jobs.queue import OwnerDeactivated, cancel_job


def submit_error(errors: Any) -> dict[str, Any]:
    """Phrase a bulk submit's errors: the list's own limit, or the index of each bad item."""
    if (message := list_limit_error(errors)) is not None:
        return {"error": message}
    pairs = errors.items() if isinstance(errors, dict) else enumerate(errors)
    bad = {str(index): item for index, item in pairs if item}
    first = next(iter(bad))
    return {"error": f"Item {first} is invalid; nothing was queued.", "items": bad}


def refused_callbacks(items: list[dict[str, Any]], many: bool) -> dict[str, Any] | None:
    """A well-formed callback URL to a host this gateway may not call (not allowed,
    link-local or cloud metadata, or not resolving): 403 naming it, as for programs."""
    for index, item in enumerate(items):
        if not (url := item.get("callback_url")):
            continue
        try:
            check_callback_url(url)  # the SSRF guard, resolving the name now
        except CallbackNotAllowed as error:
            if not many:
                return {"callback_url": [str(error)]}
            return {
                "error": f"Item {index} may not be called back; nothing was queued.",
                "items": {str(index): {"callback_url": [str(error)]}},
            }
    return None


class JSONClientsFirst(DefaultContentNegotiation):
    """DRF's content negotiation, answering the common JSON client without parsing.

    A client that accepts anything or JSON (`*/*`, `application/json`, no Accept header)
    and names no format gets the first renderer, JSON, exactly as DRF's parse of the header
    would choose; any other Accept header (a browser's, for the browsable API) or a
    `?format=` goes through DRF's own negotiation.
    """

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        if (
            format_suffix is None
            and renderers
            and renderers[0].media_type == "application/json"
            and request.META.get("HTTP_ACCEPT", "*/*") in ("*/*", "application/json")
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)


class JobListCreateView(generics.ListAPIView):
    """List jobs (`?user_id=&status=`) or submit one (an object) or many (a list, all or nothing)."""

    serializer_class = JobSerializer
    parser_classes = [JSONParser]
    permission_classes = JOB_READERS
    pagination_class = JobListPagination  # by cursor; `offset` for existing clients
    throttle_classes = SUBMIT_THROTTLES  # POST only
    content_negotiation_class = JSONClientsFirst

    def get_permissions(self) -> Sequence[Any]:
        # A submit says who it acts for last (`acting_owner`), after its body is validated.
        return [AllowAny()] if self.request.method == "POST" else super().get_permissions()

    def get_queryset(self) -> QuerySet[Job]:
        jobs = visible_jobs(self.request)
        user_id = self.request.query_params.get("user_id")
        if not self.request.user.is_authenticated and not user_id:
            raise exceptions.ValidationError({"user_id": ["Name the user whose jobs to list."]})
        if user_id is not None and not re.fullmatch(USER_ID_PATTERN, user_id):
            # `user_id=` (empty) too: the schema says 1 to 150 characters.
            # Also keeps a NUL byte away from PostgreSQL, which refuses it (a 500 before).
            raise exceptions.ValidationError({"user_id": [USER_ID_RULE]})
        if user_id:
            jobs = jobs.filter(owner__username=user_id)
        job_status = self.request.query_params.get("status")
        if job_status:
            if job_status not in JobStatus.values:
                raise exceptions.ValidationError(
                    {
                        "status": [
                            f"Unknown status {job_status!r}; valid: {', '.join(JobStatus.values)}."
                        ]
                    }
                )
            jobs = jobs.filter(status=job_status)
        return jobs.order_by("-id")  # the cursor is a keyset on id

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "user_id",
                str,
                pattern=USER_ID_PATTERN,
                description="Whose jobs (required without a token).",
            ),
            OpenApiParameter("status", str, enum=JobStatus.values),
        ]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=JobSubmitSerializer,
        responses={201: JobSerializer, 200: JobSerializer, **SUBMIT_REFUSALS},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        many = isinstance(request.data, list)
        if not many and not isinstance(request.data, dict):
            raise exceptions.ValidationError(
                {"error": "Send a JSON object (one job) or a list of them."}
            )
        # A plain one-job body is validated without building the serializer's fields;
        # anything else, and every error, goes through the serializer.
        lean = None if many else lean_submit_item(request.data)
        if lean is not None:
            items = [lean]
        else:
            serializer = (
                JobSubmitSerializer.bulk(request.data)
                if many
                else JobSubmitSerializer(data=request.data)
            )
            if not serializer.is_valid():
                raise exceptions.ValidationError(
                    submit_error(serializer.errors) if many else serializer.errors
                )
            items = serializer.validated_data if many else [serializer.validated_data]
        if (refused := refused_callbacks(items, many)) is not None:
            return Response(refused, status=status.HTTP_403_FORBIDDEN)
        named = {item.get("user_id") for item in items}
        if len(named) > 1:
            raise exceptions.ValidationError(
                {"user_id": ["All jobs of one request must be for one user."]}
            )
        key = read_idempotency_key(request)
        # Who it acts for; a named user is found or created by the submit's own call.
        owner = acting_owner(request, named.pop())
        specs = [JobSubmitSerializer.spec_from(item) for item in items]
        callback_urls = [item.get("callback_url", "") for item in items]
        try:
            jobs, created = submit_with_callbacks(owner, specs, callback_urls, idempotency_key=key)
        except OwnerDeactivated as error:
            raise exceptions.PermissionDenied(str(error)) from error
        data = JobSerializer(jobs, many=True, context={"request": request}).data
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(data if many else data[0], status=code)


class JobDetailView(generics.RetrieveAPIView):
    """A job: status, result or error, timestamps, and its queue position while queued."""

    serializer_class = JobDetailSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "job_id"
    permission_classes = JOB_READERS
    content_negotiation_class = JSONClientsFirst

    def get_queryset(self) -> QuerySet[Job]:
        return visible_jobs(self.request)


class JobCancelView(generics.GenericAPIView):
    """Cancel a queued job; a job that has started or finished answers 409."""

    serializer_class = JobSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "job_id"
    permission_classes = JOB_READERS

    def get_queryset(self) -> QuerySet[Job]:
        return visible_jobs(self.request)

    @extend_schema(request=None, responses={200: JobSerializer, 409: None})
    def post(self, request: Request, job_id: str) -> Response:
        job = self.get_object()
        by = request.user.username if request.user.is_authenticated else ""
        if not cancel_job(job, cancelled_by=by):
            job.refresh_from_db()
            return Response(
                {"error": f"Job is {job.status}; only a queued job can be cancelled."},
                status=status.HTTP_409_CONFLICT,
            )
        job.refresh_from_db()
        return Response(JobSerializer(job, context={"request": request}).data)


class UserCreateView(APIView):
    """Create a user with a weight (`jobs.add_user`; a staff account: superusers only).
    Answers with the user and an API token."""

    permission_classes = [CreatesUsers]
    parser_classes = [JSONParser]

    @extend_schema(
        request=UserCreateSerializer,
        responses={
            201: UserSerializer,
            409: OpenApiResponse(description="A user of that name exists already."),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = UserCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if User.objects.filter(username=data["user_id"]).exists():
            # A well-formed request that conflicts with the state: 409, not 400.
            return Response(
                {"error": f"User {data['user_id']!r} already exists."},
                status=status.HTTP_409_CONFLICT,
            )
        user = User(username=data["user_id"], weight=data["weight"], is_staff=data["is_staff"])
        if data.get("password"):
            user.set_password(data["password"])
        else:
            user.set_unusable_password()
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        body = UserSerializer(user_summary(user)).data
        return Response({**body, "token": token.key}, status=status.HTTP_201_CREATED)


class UserDetailView(APIView):
    """A user's weight, queued and running counts and device time (the user or staff);
    PATCH changes the weight (operators), effective at the next dispatch."""

    parser_classes = [JSONParser]
    permission_classes = ACCOUNT_READERS

    def get_user(self, user_id: str) -> User:
        if not re.fullmatch(USER_ID_PATTERN, user_id):  # no such user (nor a NUL byte)
            raise exceptions.NotFound(f"User {user_id!r} not found.")
        user = User.objects.filter(username=user_id).first()
        if user is None:
            raise exceptions.NotFound(f"User {user_id!r} not found.")
        return user

    @extend_schema(responses=UserSerializer)
    def get(self, request: Request, user_id: str) -> Response:
        return Response(UserSerializer(user_summary(self.get_user(user_id))).data)

    @extend_schema(request=UserWeightSerializer, responses=UserSerializer)
    def patch(self, request: Request, user_id: str) -> Response:
        user = self.get_user(user_id)
        serializer = UserWeightSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if "weight" in serializer.validated_data:  # PATCH {} changes nothing
            User.objects.filter(pk=user.pk).update(weight=serializer.validated_data["weight"])
            user.refresh_from_db()
        return Response(UserSerializer(user_summary(user)).data)


HEALTH = {"status": "ok"}


class HealthView(APIView):
    """Whether this web process answers (no database is asked)."""

    # The docstring above is what the browsable API and OPTIONS show. Served as an
    # `async def` view (`as_view`): a plain `GET` that takes JSON is answered on the event
    # loop, with the bytes and headers DRF gives it, and no thread hop (issue 16); anything
    # else (the browsable API's HTML, `?format=`, OPTIONS, other methods) goes to this DRF
    # view in the request's thread. It is also the trivial view the benchmarks compare the
    # API with. The schema and the browsable API see the DRF view (the returned function
    # carries `cls`, as DRF's does).

    authentication_classes: list[type] = []

    @extend_schema(responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response(HEALTH)

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        drf_view = super().as_view(**initkwargs)
        body = JSONRenderer().render(HEALTH)
        described = cls(**initkwargs)
        described.head = described.get  # type: ignore[attr-defined]  # as View.setup does
        allow = ", ".join(described.allowed_methods)

        through_drf = sync_to_async(drf_view, thread_sensitive=True)

        async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if (
                request.method == "GET"
                and not request.META.get("QUERY_STRING")
                and _takes_plain_json(request.META.get("HTTP_ACCEPT"))
            ):
                response = HttpResponse(body, content_type="application/json")
                response["Allow"] = allow
                response["Vary"] = "Accept"
                return response
            return await through_drf(request, *args, **kwargs)

        view.cls = cls  # type: ignore[attr-defined]
        view.initkwargs = initkwargs  # type: ignore[attr-defined]
        view.csrf_exempt = True  # type: ignore[attr-defined]
        return view


def _takes_plain_json(accept: str | None) -> bool:
    # What DRF's negotiation answers with its JSONRenderer and no parameters. No header
    # is `*/*` to DRF, but a header naming no type at all ("", ",") is its 406.
    if accept is None:
        return True
    parts = [part.strip() for part in accept.split(",")]
    return any(parts) and all(
        part in ("", "*/*", "application/*", "application/json") for part in parts
    )


class TokenView(ObtainAuthToken):
    """`POST /api/token/`: username and password for an API token. Credentials that do not
    match are a 401 (a well-formed request the server declines), a malformed body a 400."""

    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(
        request=AuthTokenSerializer,
        responses={
            200: AuthTokenSerializer,
            401: OpenApiResponse(description="No user with that username and password."),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid() and serializer.errors.keys() == {
            api_settings.NON_FIELD_ERRORS_KEY
        }:
            raise exceptions.AuthenticationFailed(
                "Unable to log in with the given username and password."
            )
        serializer.is_valid(raise_exception=True)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
