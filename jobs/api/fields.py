"""Serializer fields that accept exactly what the published schema says (issue 17).

DRF's own fields coerce: a `CharField` takes `0` as "0", a `BooleanField` takes `0`, "yes"
and "on", a `JSONField` describes itself as any value though it refuses null. A client
generated from the schema, and Schemathesis's conformance checks, rely on the schema
being the contract, so the JSON APIs use these instead.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# Any JSON value but null, in OpenAPI 3.0 (which has no list of types).
NON_NULL_JSON: dict[str, Any] = {
    "anyOf": [
        {"type": "object"},
        {"type": "array"},
        {"type": "string"},
        {"type": "number"},
        {"type": "boolean"},
    ]
}


class StrictStringMixin:
    """Refuse a JSON number or boolean where the schema says string (no coercion)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.", code="invalid")
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictCharField(StrictStringMixin, serializers.CharField):
    pass


class StrictRegexField(StrictStringMixin, serializers.RegexField):
    pass


class StrictBooleanField(serializers.BooleanField):
    """JSON `true` or `false` only."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError("Must be true or false.", code="invalid")
        return data


@extend_schema_field(NON_NULL_JSON)
class NonNullJSONField(serializers.JSONField):
    """Any JSON value except null (what `JSONField` accepts, stated in the schema)."""
