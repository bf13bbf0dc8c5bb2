"""Input validation and output shape of the devices API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from devices import protocol
from jobs.api.fields import StrictCharField, StrictRegexField

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
DEVICE_TYPE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class DeviceRegisterSerializer(serializers.Serializer):
    """Strict strings: `"url": 0` was read as the address "0" (a simulated device)."""

    id = StrictRegexField(
        DEVICE_ID_PATTERN,
        error_messages={"invalid": "id may hold 1 to 128 letters, digits and . - _"},
    )
    type = StrictRegexField(
        DEVICE_TYPE_PATTERN,
        error_messages={"invalid": "type may hold 1 to 64 letters, digits and . - _"},
    )
    size = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0)
    url = StrictCharField(
        max_length=2000,
        help_text="The agent's http(s) URL; any other address is a simulated device.",
    )


class DeviceSerializer(serializers.Serializer):
    """A device in the pool, as `pool_listing` describes it."""

    id = serializers.CharField()
    type = serializers.CharField()
    size = serializers.IntegerField()
    kind = serializers.CharField()
    url = serializers.CharField()
    state = serializers.CharField()
    current_job = serializers.CharField(allow_null=True)
    current_user = serializers.CharField(allow_null=True)
    last_seen = serializers.DateTimeField(allow_null=True)
    registered_at = serializers.DateTimeField()


class DeviceCommandSerializer(serializers.Serializer):
    command = serializers.ChoiceField(choices=list(protocol.COMMANDS))
    args = serializers.DictField(required=False, default=dict)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            command = protocol.parse_command({"command": attrs["command"], "args": attrs["args"]})
        except protocol.ProtocolError as error:
            raise serializers.ValidationError({"args": [error.message]}) from None
        return {"command": command.name, "args": command.args}


# The request as the schema states it: one shape per command, each with the `args` that
# `protocol.parse_command` accepts (no extra properties), so a schema-valid command is
# never refused as malformed.
DEVICE_COMMAND_REQUEST_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "enum": [name]},
                "args": protocol.COMMAND_ARG_SCHEMAS[name],
            },
            "required": ["command", "args"]
            if protocol.COMMAND_ARG_SCHEMAS[name].get("required")
            else ["command"],
        }
        for name in protocol.COMMANDS
    ]
}
