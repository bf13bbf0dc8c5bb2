"""The programs API: `POST /api/programs/` (a program and its jobs, all or nothing) and
`GET /api/programs/<id>/` (its state, every job's result, the callback's delivery)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api.parsers import JSONParser
from jobs.api.serializers import DEVICE_TYPE_PATTERN, USER_ID_PATTERN, check_storable_json
from jobs.api.views import acting_user
from jobs.models import Program
from jobs.programs import (
    CallbackNotAllowed,
    ProgramJob,
    check_callback_url,
    create_program,
    program_report,
)

MAX_SHOTS = 1_000_000
MAX_INSTRUCTIONS = 100_000


class ProgramJobSerializer(serializers.Serializer):
    instructions = serializers.ListField(
        child=serializers.JSONField(), max_length=MAX_INSTRUCTIONS, allow_empty=True
    )
    shots = serializers.IntegerField(min_value=1, max_value=MAX_SHOTS)
    size = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0)

    def validate_instructions(self, value: list[Any]) -> list[Any]:
        try:
            check_storable_json(value)
        except serializers.ValidationError as error:
            raise serializers.ValidationError(
                str(error.detail[0]).replace("input", "instructions")
            ) from None
        return value


class ProgramSubmitSerializer(serializers.Serializer):
    user_id = serializers.RegexField(USER_ID_PATTERN, required=False)
    priority = serializers.IntegerField(default=0, min_value=-100, max_value=100)
    device_type = serializers.RegexField(DEVICE_TYPE_PATTERN, default="qpu")
    jobs = ProgramJobSerializer(many=True, allow_empty=False)
    callback_url = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default=""
    )

    def validate_jobs(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > settings.ZYPHER_MAX_BULK_JOBS:
            raise serializers.ValidationError(f"At most {settings.ZYPHER_MAX_BULK_JOBS} jobs.")
        return value

    def validate_callback_url(self, value: str) -> str:
        if value:
            try:
                check_callback_url(value)
            except CallbackNotAllowed as error:
                raise serializers.ValidationError(str(error)) from None
        return value


def program_body(program: Program) -> dict[str, Any]:
    return {
        **program_report(program),
        "user_id": program.owner.username,
        "created_at": program.created_at,
        "callback_url": program.callback_url,
        "callback": {
            "status": program.callback_status,
            "attempts": program.callback_attempts,
            "error": program.callback_error,
            "delivered_at": program.delivered_at,
        },
    }


def visible_programs(request: Request) -> QuerySet[Program]:
    programs = Program.objects.select_related("owner")
    if request.user.is_authenticated:
        return programs if request.user.is_staff else programs.filter(owner=request.user)
    if settings.ZYPHER_OPEN_MODE:
        return programs
    raise exceptions.NotAuthenticated(
        "Send 'Authorization: Token <key>' (POST /api/token/ issues one)."
    )


class ProgramCreateView(APIView):
    """Create a program and its `qpu` jobs in one transaction; 201 with the ids."""

    parser_classes = [JSONParser]

    @extend_schema(
        request=ProgramSubmitSerializer,
        responses={201: dict, 200: dict},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise exceptions.ValidationError({"error": "Send a JSON object."})
        serializer = ProgramSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 200:
            raise exceptions.ValidationError({"Idempotency-Key": ["At most 200 characters."]})
        owner = acting_user(request, data.get("user_id"))
        program, jobs, created = create_program(
            owner,
            [ProgramJob(job["instructions"], job["shots"], job["size"]) for job in data["jobs"]],
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


class ProgramDetailView(APIView):
    """A program's state and every job's result (owner, staff; open mode: anyone with the id)."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, program_id: str) -> Response:
        program = visible_programs(request).filter(public_id=program_id).first()
        if program is None:
            raise exceptions.NotFound(f"Program {program_id} not found.")
        return Response(program_body(program))


urlpatterns = [
    path("api/programs/", ProgramCreateView.as_view(), name="program-create"),
    path("api/programs/<uuid:program_id>/", ProgramDetailView.as_view(), name="program-detail"),
]
