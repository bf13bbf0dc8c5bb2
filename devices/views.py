"""The devices API: register, list and remove devices, send them commands, take reports.

Who may do what: registering and removing take the registration token
(`X-Zypher-Device-Token: <ZYPHER_DEVICE_TOKEN>`) or a user holding
`devices.manage_devices` (the device registrar role, superusers); listing also open
mode, without job ids or users; commands take that permission (the token is not
enough); reports are signed with the device's own secret. Registering a known id again also passes when the request is signed
with that device's secret; a local device's id is never registered (issue 17).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import pool, protocol
from devices.access import MANAGE_DEVICES, ManagesDevices
from devices.agent import REGISTRATION_TOKEN_HEADER
from devices.commands import DeviceUnreachable, send_command
from devices.models import Device
from devices.serializers import (
    DEVICE_COMMAND_REQUEST_SCHEMA,
    DeviceCommandSerializer,
    DeviceRegisterSerializer,
    DeviceSerializer,
)
from jobs.api.access import holds
from jobs.api.parsers import JSONParser
from jobs.models import Job, JobStatus

log = logging.getLogger("zypher.devices")


def has_registration_token(request: HttpRequest | Request) -> bool:
    expected = settings.ZYPHER_DEVICE_TOKEN
    given = request.headers.get(REGISTRATION_TOKEN_HEADER, "")
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def is_registrar(request: Request) -> bool:
    """The registration token or a device registrar (`devices.manage_devices`, not
    `is_staff`): may register, re-point and remove devices and see who runs what."""
    return has_registration_token(request) or holds(request.user, MANAGE_DEVICES)


def require_registrar(request: Request) -> None:
    """The registration token or a device registrar."""
    if is_registrar(request):
        return
    if request.headers.get(REGISTRATION_TOKEN_HEADER):
        raise exceptions.PermissionDenied("Wrong device registration token.")
    if request.user.is_authenticated:  # known, but not a registrar: 403, not 401
        raise exceptions.PermissionDenied(
            f"This needs the registration token or the {MANAGE_DEVICES} permission "
            "(the device registrar role)."
        )
    raise exceptions.NotAuthenticated(
        f"Send '{REGISTRATION_TOKEN_HEADER}: <ZYPHER_DEVICE_TOKEN>' or the token of a user "
        f"with the {MANAGE_DEVICES} permission (the device registrar role)."
    )


def signed_by_device(request: Request, device: Device) -> bool:
    """Whether `request` is signed (protocol.sign) with `device`'s current secret."""
    if not device.secret or not request.headers.get(protocol.SIGNATURE_HEADER):
        return False
    max_age = settings.ZYPHER_SIGNATURE_MAX_AGE_SECONDS
    try:
        protocol.verify(
            device.secret,
            request.method or "POST",
            request.path,
            request.body,
            request.headers,
            pool.DatabaseNonceStore(device.name, max_age),
            max_age=max_age,
        )
    except protocol.ProtocolError as error:
        log.warning("registration of %s refused: %s", device.name, error.message)
        return False
    return True


def require_may_register(request: Request, name: Any, *, open_to_new: bool) -> None:
    """Registering `name`: the registration token or a registrar; a known device's own
    secret (a signed request); a new name too when `open_to_new` (the exercise's routes
    in open mode without a token). A local device's id is refused later, for everyone
    (pool.register_device)."""
    device = Device.objects.filter(name=name).first() if isinstance(name, str) else None
    if is_registrar(request):
        return
    if device is not None and signed_by_device(request, device):
        return
    if device is None and open_to_new:
        return
    if device is not None and open_to_new and not request.headers.get(REGISTRATION_TOKEN_HEADER):
        raise exceptions.PermissionDenied(
            f"Device {name!r} is registered: registering it again needs the registration "
            "token, a registrar's token or a request signed with its secret."
        )
    require_registrar(request)


def pool_listing(
    devices: list[Device] | None = None, *, show_jobs: bool = True
) -> list[dict[str, Any]]:
    """Every device with its state, current job and that job's user (both None unless
    `show_jobs`: who runs what is for registrars)."""
    if devices is None:
        devices = list(Device.objects.select_related("current_job__owner").order_by("name"))
    local_names = [device.name for device in devices if device.kind == Device.Kind.LOCAL]
    local_jobs = {
        job.device: job
        for job in Job.objects.filter(status=JobStatus.RUNNING, device__in=local_names)
        .select_related("owner")
        .only("public_id", "device", "owner__username")
    }
    listing = []
    for device in devices:
        state = device.state
        job = device.current_job
        if device.kind == Device.Kind.LOCAL:
            job = local_jobs.get(device.name)
            if pool.local_device_is_stale(device):
                state = Device.State.OFFLINE
            elif job is not None:
                state = Device.State.BUSY
        listing.append(
            {
                "id": device.name,
                "type": device.device_type,
                "size": device.size,
                "kind": device.kind,
                "url": device.url,
                "state": state,
                "current_job": str(job.public_id) if job is not None and show_jobs else None,
                "current_user": job.owner.username if job is not None and show_jobs else None,
                "last_seen": device.last_seen,
                "registered_at": device.registered_at,
            }
        )
    return listing


def registered_body(device: Device) -> dict[str, Any]:
    [described] = pool_listing([device], show_jobs=False)  # a new registration runs nothing
    return {**described, "secret": device.secret}


class DeviceListCreateView(APIView):
    """The pool (GET) or register a device (POST: 201 with its signing secret)."""

    parser_classes = [JSONParser]

    @extend_schema(responses=DeviceSerializer(many=True))
    def get(self, request: Request) -> Response:
        if not settings.ZYPHER_OPEN_MODE:
            require_registrar(request)
        devices = Device.objects.select_related("current_job__owner").order_by("name")
        device_type = request.query_params.get("type")
        if device_type:
            devices = devices.filter(device_type=device_type)
        listing = pool_listing(list(devices), show_jobs=is_registrar(request))
        return Response(DeviceSerializer(listing, many=True).data)

    @extend_schema(
        request=DeviceRegisterSerializer,
        responses={
            201: DeviceSerializer,
            200: DeviceSerializer,
            409: OpenApiResponse(description="The id is one of this gateway's local devices."),
        },
        parameters=[OpenApiParameter(REGISTRATION_TOKEN_HEADER, str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        request.body  # noqa: B018 - read before DRF parses it: a signed request's signature covers it
        data = request.data
        require_may_register(
            request, data.get("id") if isinstance(data, dict) else None, open_to_new=False
        )
        return register_from(data)


def register_from(data: Any) -> Response:
    """Register what `data` describes (the caller checked who may: require_may_register)."""
    if not isinstance(data, dict):
        raise exceptions.ValidationError({"error": "Send a JSON object."})
    serializer = DeviceRegisterSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    fields = serializer.validated_data
    try:
        device, created = pool.register_device(
            fields["id"], fields["type"], fields["size"], fields["url"]
        )
    except pool.LocalDeviceId as error:
        return Response({"error": str(error)}, status=status.HTTP_409_CONFLICT)
    return Response(
        registered_body(device), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
    )


class DeviceDetailView(APIView):
    """One device (GET), or remove it (DELETE: its running job goes back to the queue)."""

    @extend_schema(responses=DeviceSerializer)
    def get(self, request: Request, device_id: str) -> Response:
        if not settings.ZYPHER_OPEN_MODE:
            require_registrar(request)
        device = Device.objects.filter(name=device_id).select_related("current_job__owner").first()
        if device is None:
            raise exceptions.NotFound(f"Device {device_id!r} not found.")
        [described] = pool_listing([device], show_jobs=is_registrar(request))
        return Response(DeviceSerializer(described).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, device_id: str) -> Response:
        require_registrar(request)
        if not pool.remove_device(device_id):
            raise exceptions.NotFound(f"Device {device_id!r} not found.")
        return Response(status=status.HTTP_204_NO_CONTENT)


def run_device_command(
    device: Device, command: str, args: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """Send an operator's command; (HTTP status for the API, answer). Shared with the admin."""
    try:
        answer = send_command(device, command, args, timeout=settings.ZYPHER_DEVICE_TIMEOUT_SECONDS)
    except DeviceUnreachable as error:
        return error.status, {"ok": False, "state": device.state, "error": error.message}
    body = {"ok": answer.status == 200, "state": answer.body.get("state", device.state)}
    if answer.status == 200:
        return 200, {**body, "result": answer.body.get("result")}
    reason = answer.body.get("error") or f"the device answered {answer.status}"
    if answer.status == 401:
        # The agent refused our signature: it holds another secret (registered again?).
        return 502, {**body, "error": f"the device refused the gateway's signature: {reason}"}
    code = answer.status if answer.status in (400, 409, 413) else 502
    return code, {**body, "error": reason}


class DeviceCommandView(APIView):
    """Send a command to a device (`devices.manage_devices`): 200 with its answer, 409
    refused in its state, 400 malformed, 502/504 when the device does not answer."""

    permission_classes = [ManagesDevices]
    parser_classes = [JSONParser]

    @extend_schema(
        request={"application/json": DEVICE_COMMAND_REQUEST_SCHEMA},
        responses={
            200: dict,
            409: OpenApiResponse(description="The device refuses the command in its state."),
            502: OpenApiResponse(description="The device's answer was an error or not believed."),
            504: OpenApiResponse(description="The device did not answer in time."),
        },
    )
    def post(self, request: Request, device_id: str) -> Response:
        device = Device.objects.filter(name=device_id).first()
        if device is None:
            raise exceptions.NotFound(f"Device {device_id!r} not found.")
        if not isinstance(request.data, dict):
            raise exceptions.ValidationError({"error": "Send a JSON object."})
        serializer = DeviceCommandSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        code, body = run_device_command(
            device, serializer.validated_data["command"], serializer.validated_data["args"]
        )
        return Response(body, status=code)


@method_decorator(csrf_exempt, name="dispatch")
class DeviceReportView(View):
    """Reports from an agent, signed with its secret: a job finished or given back, a
    state change. 200 accepted (a result that cannot be stored fails its job: 200 with
    `"status": "failed"` and the reason); 401 bad signature, stale or replayed; 400
    malformed; 409 refused (the device no longer holds that claim)."""

    def post(self, request: HttpRequest, device_id: str) -> JsonResponse:
        device = Device.objects.filter(name=device_id).exclude(kind=Device.Kind.LOCAL).first()
        if device is None or not device.secret:
            return JsonResponse(
                {"ok": False, "error": f"Device {device_id!r} not found."}, status=404
            )
        max_age = settings.ZYPHER_SIGNATURE_MAX_AGE_SECONDS
        try:
            message = protocol.verify(
                device.secret,
                "POST",
                request.path,
                request.body,
                request.headers,
                pool.DatabaseNonceStore(device.name, max_age),
                max_age=max_age,
                max_bytes=protocol.MAX_REPORT_BYTES,
            )
            report = protocol.parse_report(message)
        except protocol.ProtocolError as error:
            log.warning("report from %s refused: %s", device_id, error.message)
            return JsonResponse({"ok": False, "error": error.message}, status=error.status)
        answer = pool.apply_report(device, report)
        return JsonResponse(answer.body, status=answer.status)
