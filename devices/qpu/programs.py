"""`POST /api/programs/`: a program of `qpu` jobs (the QPU exercise's circuits) with one
priority and an optional callback URL, all queued or none.

The program itself, its callback delivery and `GET /api/programs/<id>/` belong to the
queue (`jobs.programs`, `jobs.api.programs`); what a QPU job holds is said here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from devices.qpu.mock import MAX_SHOTS
from jobs.api.access import acting_user, read_idempotency_key
from jobs.api.errors import SUBMIT_REFUSALS
from jobs.api.fields import NonNullJSONField, StrictRegexField
from jobs.api.parsers import JSONParser
from jobs.api.serializers import DEVICE_TYPE_PATTERN, USER_ID_PATTERN, check_storable_json
from jobs.api.throttles import SUBMIT_THROTTLES
from jobs.models import Job, Program, User
from jobs.programs import (
    CALLBACK_URL_PATTERN,
    CallbackNotAllowed,
    check_callback_url,
    create_program,
)
from jobs.queue import JobSpec

QPU_KIND = "qpu"
NON_FIELD_ERRORS = api_settings.NON_FIELD_ERRORS_KEY
MAX_INSTRUCTIONS = 100_000


@dataclass(frozen=True)
class QpuJob:
    """One job of a program: a QPU circuit and the device size it needs."""

    instructions: list[Any]
    shots: int
    size: int = 0


def qpu_job_spec(job: QpuJob, *, device_type: str, priority: int) -> JobSpec:
    return JobSpec(
        kind=QPU_KIND,
        input={"instructions": job.instructions, "shots": job.shots},
        device_type=device_type,
        priority=priority,
        size=job.size,
    )


def create_qpu_program(
    owner: User,
    jobs: list[QpuJob],
    *,
    device_type: str,
    priority: int = 0,
    callback_url: str = "",
    idempotency_key: str | None = None,
) -> tuple[Program, list[Job], bool]:
    """`jobs.programs.create_program` with `qpu` jobs: the program, its jobs, and whether
    they were created now (False: a repeated idempotency key)."""
    specs = [qpu_job_spec(job, device_type=device_type, priority=priority) for job in jobs]
    return create_program(
        owner,
        specs,
        device_type=device_type,
        priority=priority,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
    )


class ProgramJobListSerializer(serializers.ListSerializer):
    """A program's jobs: at most `max_length`, answered as `{"jobs": ["At most N jobs."]}`."""

    default_error_messages = {"max_length": "At most {max_length} jobs."}

    def run_validation(self, data: Any = serializers.empty) -> Any:
        try:
            return super().run_validation(data)
        except serializers.ValidationError as error:
            # The list's own length limit, as the field's error (as the API always answered).
            if error.get_codes() == {NON_FIELD_ERRORS: ["max_length"]}:
                assert isinstance(error.detail, dict)
                raise serializers.ValidationError(error.detail[NON_FIELD_ERRORS]) from None
            raise


def check_instructions(value: list[Any]) -> list[Any]:
    """`instructions` that a JSON column stores as sent: the main API's check of `input`
    (`check_storable_json`), its message naming this field. For every route that takes them."""
    try:
        check_storable_json(value)
    except serializers.ValidationError as error:
        assert isinstance(error.detail, list)
        raise serializers.ValidationError(
            str(error.detail[0]).replace("input", "instructions")
        ) from None
    return value


class ProgramJobSerializer(serializers.Serializer):
    instructions = serializers.ListField(
        child=NonNullJSONField(), max_length=MAX_INSTRUCTIONS, allow_empty=True
    )
    shots = serializers.IntegerField(min_value=1, max_value=MAX_SHOTS)
    size = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0)

    def validate_instructions(self, value: list[Any]) -> list[Any]:
        return check_instructions(value)


class ProgramSubmitSerializer(serializers.Serializer):
    user_id = StrictRegexField(USER_ID_PATTERN, required=False)
    priority = serializers.IntegerField(default=0, min_value=-100, max_value=100)
    device_type = StrictRegexField(DEVICE_TYPE_PATTERN, default="qpu")
    # jobs: a list of ProgramJobSerializer, see get_fields
    callback_url = StrictRegexField(
        CALLBACK_URL_PATTERN,
        max_length=2000,
        required=False,
        allow_blank=True,
        default="",
        help_text="An http(s) URL with a host, or empty for none; a host outside "
        "ZYPHER_CALLBACK_ALLOWED_HOSTS is a 403.",
        error_messages={"invalid": "callback_url must be an http(s) URL with a host."},
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        # The limit is a setting, read for each request rather than when this is imported.
        jobs = ProgramJobListSerializer(
            child=ProgramJobSerializer(),
            allow_empty=False,
            max_length=settings.ZYPHER_MAX_BULK_JOBS,
        )
        return {**super().get_fields(), "jobs": jobs}


# The schema's view of ProgramSubmitSerializer: `jobs` is a non-empty list (get_fields
# builds it per request, which drf-spectacular does not see).
class ProgramSubmitSchema(ProgramSubmitSerializer):
    def get_fields(self) -> dict[str, serializers.Field]:
        jobs = serializers.ListField(
            child=ProgramJobSerializer(), min_length=1, max_length=settings.ZYPHER_MAX_BULK_JOBS
        )
        return {**super().get_fields(), "jobs": jobs}


class ProgramCreateView(APIView):
    """Create a program and its `qpu` jobs in one transaction; 201 with the ids."""

    parser_classes = [JSONParser]
    throttle_classes = SUBMIT_THROTTLES

    @extend_schema(
        request=ProgramSubmitSchema,
        responses={201: dict, 200: dict, **SUBMIT_REFUSALS},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise exceptions.ValidationError({"error": "Send a JSON object."})
        serializer = ProgramSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data["callback_url"]:
            try:
                check_callback_url(data["callback_url"])
            except CallbackNotAllowed as error:
                # Well formed, but a destination this gateway may not call: 403, not 400.
                return Response({"callback_url": [str(error)]}, status=status.HTTP_403_FORBIDDEN)
        key = read_idempotency_key(request)
        owner = acting_user(request, data.get("user_id"))
        program, jobs, created = create_qpu_program(
            owner,
            [QpuJob(job["instructions"], job["shots"], job["size"]) for job in data["jobs"]],
            device_type=data["device_type"],
            priority=data["priority"],
            callback_url=data["callback_url"],
            idempotency_key=key,
        )
        body = {
            "id": str(program.public_id),
            "url": request.build_absolute_uri(f"/api/programs/{program.public_id}/"),
            "job_ids": [str(job.public_id) for job in jobs],
            "priority": program.priority,
            "device_type": program.device_type,
            "callback_url": program.callback_url,
        }
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


urlpatterns = [
    path("api/programs/", ProgramCreateView.as_view(), name="program-create"),
]
