"""The QPU exercise's own routes, a thin adapter over the real API.

Existing users' curl scripts send JSON without a `Content-Type` header, so the body is
read as JSON whatever its content type. The routes, with or without a trailing slash:

* `POST /devices` `{"id", "address", "type", "size"}` and `POST /device`
  `{"device_id", "address", "device_type", "size"}`: register a device (`address` is its
  URL; an address that is not http(s) is a simulated device run by the dispatcher).
* `DELETE /devices/<id>`: remove it; `GET /devices`: the pool.
* `POST /jobs` `{"id", "priority", "user_id", "program_id", "device_type"}` and `POST /job`
  `{"job_id", ...}`: a `qpu` job (optional `instructions`, `shots` (default 100), `size`).
  The client's id is the job's idempotency key; `program_id` groups jobs into a program.
* `GET /jobs/<id>`, `GET /job/<id>`: the job by the client's id, with its result.

Registering and removing need the registration token or a staff token, as on
`/api/devices/`, whenever ZYPHER_DEVICE_TOKEN is set or open mode is off. In open mode
without it, the scripts' requests (no token) may register new ids and remove devices;
registering a known id again still needs the token, staff or that device's secret. The
listing shows job ids and users to registrars only (issue 17).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import re_path
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import pool
from devices.models import ClientProgramId, Device
from devices.qpu.programs import QpuJob, check_instructions, qpu_job_spec
from devices.views import (
    is_registrar,
    pool_listing,
    register_from,
    require_may_register,
    require_registrar,
)
from jobs.api.access import JOB_READERS, acting_user, visible_jobs
from jobs.api.parsers import JSONParser
from jobs.api.serializers import DEVICE_TYPE_PATTERN, USER_ID_PATTERN
from jobs.api.throttles import SUBMIT_THROTTLES
from jobs.models import Job, Program, User
from jobs.queue import submit_jobs

DEFAULT_SHOTS = 100


class AnyContentTypeJSONParser(JSONParser):
    """JSON, whatever the request's Content-Type says (curl -d sends a form type)."""

    media_type = "*/*"


class CompatView(APIView):
    parser_classes = [AnyContentTypeJSONParser]
    schema = None  # a legacy contract, documented in docs/devices.md, not in the OpenAPI schema

    def body(self, request: Request) -> dict[str, Any]:
        if not isinstance(request.data, dict):
            raise exceptions.ValidationError({"error": "Send a JSON object."})
        return request.data


def _open_to_scripts() -> bool:
    """Open mode without a registration token: the exercise's scripts, as they are."""
    return settings.ZYPHER_OPEN_MODE and not settings.ZYPHER_DEVICE_TOKEN


def _require_registrar_unless_open(request: Request) -> None:
    if not settings.ZYPHER_OPEN_MODE:
        require_registrar(request)


def _require_device_manager(request: Request) -> None:
    if not _open_to_scripts():
        require_registrar(request)


class CompatDevicesView(CompatView):
    """`POST /devices` or `/device` registers; `GET /devices` lists the pool."""

    id_field = "id"
    type_field = "type"

    def get(self, request: Request) -> Response:
        _require_registrar_unless_open(request)
        return Response(pool_listing(show_jobs=is_registrar(request)))

    def post(self, request: Request) -> Response:
        request.body  # noqa: B018 - read before DRF parses it: a signed request's signature covers it
        body = self.body(request)
        require_may_register(request, body.get(self.id_field), open_to_new=_open_to_scripts())
        answer = register_from(
            {
                "id": body.get(self.id_field),
                "type": body.get(self.type_field),
                "size": body.get("size", 0),
                "url": body.get("address"),
            }
        )
        if answer.status_code >= 400:
            return answer
        answer.data.pop("secret", None)  # agents use /api/devices/; the scripts need none
        return Response(answer.data, status=status.HTTP_201_CREATED)


class CompatDeviceVariantView(CompatDevicesView):
    id_field = "device_id"
    type_field = "device_type"


class CompatDeviceDetailView(CompatView):
    def get(self, request: Request, device_id: str) -> Response:
        _require_registrar_unless_open(request)
        device = Device.objects.filter(name=device_id).first()
        if device is None:
            raise exceptions.NotFound(f"Device {device_id!r} not found.")
        return Response(pool_listing([device], show_jobs=is_registrar(request))[0])

    def delete(self, request: Request, device_id: str) -> Response:
        _require_device_manager(request)
        if not is_registrar(request) and (
            Device.objects.filter(name=device_id, kind=Device.Kind.LOCAL).exists()
        ):
            # The scripts remove what they registered; a local worker's row is its
            # dispatcher's, and freeing its id would let anyone register that name.
            raise exceptions.PermissionDenied(
                f"Device {device_id!r} is a local worker of a dispatcher: only the "
                "registration token or a registrar removes it."
            )
        if not pool.remove_device(device_id):
            raise exceptions.NotFound(f"Device {device_id!r} not found.")
        return Response({"id": device_id, "deleted": True})


class CompatJobSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=200)
    priority = serializers.IntegerField(default=0, min_value=-100, max_value=100)
    user_id = serializers.RegexField(USER_ID_PATTERN, required=False)
    program_id = serializers.CharField(max_length=200, required=False)
    device_type = serializers.RegexField(DEVICE_TYPE_PATTERN, default="qpu")
    instructions = serializers.ListField(child=serializers.JSONField(), default=list)
    shots = serializers.IntegerField(min_value=1, max_value=1_000_000, default=DEFAULT_SHOTS)
    size = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0)

    def validate_instructions(self, value: list[Any]) -> list[Any]:
        return check_instructions(value)  # the main API's storable-JSON check


def program_for(owner: User, client_id: str, device_type: str, priority: int) -> Program:
    """The program a client's `program_id` names, created with its first job."""
    mapping = ClientProgramId.objects.filter(owner=owner, client_id=client_id).first()
    if mapping is not None:
        return Program.objects.get(pk=mapping.program_id)
    try:
        with transaction.atomic():
            program = Program.objects.create(
                owner=owner, priority=priority, device_type=device_type
            )
            ClientProgramId.objects.create(program=program, owner=owner, client_id=client_id)
            return program
    except IntegrityError:  # a concurrent first job of the same program won
        mapping = ClientProgramId.objects.get(owner=owner, client_id=client_id)
        return Program.objects.get(pk=mapping.program_id)


def compat_job_body(job: Job) -> dict[str, Any]:
    mapping = (
        ClientProgramId.objects.filter(program_id=job.program_id).first()
        if job.program_id
        else None
    )
    return {
        "id": job.idempotency_key,
        "job_id": str(job.public_id),
        "url": f"/api/jobs/{job.public_id}/",
        "user_id": job.owner.username,
        "program_id": mapping.client_id if mapping else None,
        "device_type": job.device_type,
        "priority": job.priority,
        "status": job.status,
        "result": job.result,
        "error": job.error,
        "device": job.device,
    }


class CompatJobsView(CompatView):
    """`POST /jobs` or `/job`: one `qpu` job, keyed by the client's id."""

    id_field = "id"

    throttle_classes = SUBMIT_THROTTLES  # POST only, like /api/jobs/

    def post(self, request: Request) -> Response:
        body = dict(self.body(request))
        if self.id_field != "id":
            body["id"] = body.pop(self.id_field, None)
        serializer = CompatJobSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner = acting_user(request, data.get("user_id"))
        with transaction.atomic():
            program = None
            if data.get("program_id"):
                program = program_for(
                    owner, data["program_id"], data["device_type"], data["priority"]
                )
            spec = qpu_job_spec(
                QpuJob(data["instructions"], data["shots"], data["size"]),
                device_type=data["device_type"],
                priority=data["priority"],
            )
            [job], created = submit_jobs(owner, [spec], idempotency_key=data["id"], program=program)
        job = Job.objects.select_related("owner").get(pk=job.pk)
        return Response(
            compat_job_body(job), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class CompatJobVariantView(CompatJobsView):
    id_field = "job_id"


class CompatJobDetailView(CompatView):
    """`GET /jobs/<id>`: the job the client submitted with that id (its newest)."""

    permission_classes = JOB_READERS

    def get(self, request: Request, client_id: str) -> Response:
        jobs = visible_jobs(request).filter(idempotency_key=client_id)
        user_id = request.query_params.get("user_id")
        if user_id:
            jobs = jobs.filter(owner__username=user_id)
        job = jobs.order_by("-id").first()
        if job is None:
            raise exceptions.NotFound(f"Job {client_id!r} not found.")
        return Response(compat_job_body(job))


urlpatterns = [
    re_path(r"^devices/?$", CompatDevicesView.as_view(), name="compat-devices"),
    re_path(r"^device/?$", CompatDeviceVariantView.as_view(), name="compat-device"),
    re_path(
        r"^devices?/(?P<device_id>[A-Za-z0-9_.-]+)/?$",
        CompatDeviceDetailView.as_view(),
        name="compat-device-detail",
    ),
    re_path(r"^jobs/?$", CompatJobsView.as_view(), name="compat-jobs"),
    re_path(r"^job/?$", CompatJobVariantView.as_view(), name="compat-job"),
    re_path(
        r"^jobs?/(?P<client_id>[^/]+)/?$", CompatJobDetailView.as_view(), name="compat-job-detail"
    ),
]
