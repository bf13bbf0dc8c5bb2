"""The admin: the device pool, with actions that send devices commands.

A device's state, job, fencing token, pool and size belong to the pool and the
dispatcher (`devices.pool`): they are read-only here, changed by commands (start, stop)
or by removing the device, never by editing the row. Only the URL may be edited, and
saving writes that column alone: a full-row save would write back the job and token
as they were read, over a dispatch that happened meanwhile.

Re-pointing, removing and commanding a device need `devices.manage_devices` (the device
registrar role, issue 17), as on the API; `devices.view_device` shows the pool.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from devices import pool
from devices.access import MANAGE_DEVICES
from devices.models import Device
from devices.views import run_device_command
from jobs.api.access import holds


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "device_type",
        "size",
        "kind",
        "state",
        "current_job",
        "url",
        "last_seen",
        "missed_pings",
    ]
    list_filter = ["state", "kind", "device_type"]
    search_fields = ["name", "url"]
    ordering = ["device_type", "name"]
    readonly_fields = [
        "name",
        "device_type",
        "size",
        "kind",
        "state",
        "current_job",
        "fencing_token",
        "dispatcher",
        "registered_at",
        "last_seen",
        "missed_pings",
    ]
    exclude = ["secret"]
    actions = ["send_start", "send_stop", "send_ping", "send_terminate"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # devices register themselves (POST /api/devices/)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or holds(request.user, MANAGE_DEVICES)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return holds(request.user, MANAGE_DEVICES)  # the URL: re-pointing the device

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return holds(request.user, MANAGE_DEVICES)

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return holds(request.user, MANAGE_DEVICES)

    def save_model(self, request: HttpRequest, obj: Device, form: ModelForm, change: bool) -> None:
        changed = {name: getattr(obj, name) for name in form.changed_data}
        if change and changed:
            Device.objects.filter(pk=obj.pk).update(**changed)

    def delete_model(self, request: HttpRequest, obj: Device) -> None:
        pool.remove_device(obj.name)  # its running job goes back to the queue

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        for name in list(queryset.values_list("name", flat=True)):
            pool.remove_device(name)

    def _send(self, request: HttpRequest, queryset: QuerySet[Device], command: str) -> None:
        for device in queryset:
            code, answer = run_device_command(device, command, {})
            if answer.get("ok"):
                self.message_user(
                    request,
                    f"{device.name}: {command} → {answer.get('result')} (state {answer.get('state')})",
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    f"{device.name}: {command} refused ({code}): {answer.get('error')}",
                    messages.WARNING,
                )

    @admin.action(description="Start the selected devices (ready)", permissions=["manage"])
    def send_start(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        self._send(request, queryset, "start")

    @admin.action(description="Stop the selected devices (unready)", permissions=["manage"])
    def send_stop(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        self._send(request, queryset, "stop")

    @admin.action(description="Ping the selected devices", permissions=["manage"])
    def send_ping(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        self._send(request, queryset, "ping")

    @admin.action(description="Terminate the selected devices' agents", permissions=["manage"])
    def send_terminate(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        self._send(request, queryset, "terminate")
