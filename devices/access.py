"""Who may manage devices: the permission the device registrar role holds."""

from __future__ import annotations

from jobs.api.access import OPERATOR_GROUP, REGISTRAR_GROUP, NeedsPermission, grant_to_role

MANAGE_DEVICES = "devices.manage_devices"
VIEW_DEVICES = "devices.view_device"


class ManagesDevices(NeedsPermission):
    permission = MANAGE_DEVICES
    role = "the device registrar role"


def grant_device_permissions() -> None:
    """The roles' device permissions (devices/migrations/0002 creates the same)."""
    grant_to_role(OPERATOR_GROUP, [VIEW_DEVICES])
    grant_to_role(REGISTRAR_GROUP, [MANAGE_DEVICES, VIEW_DEVICES])
