"""Request validation for the splines API: the one place where input becomes typed values.

Errors keep DRF's `{field: [message]}` shape, so every 400 names the field to fix. An
image over the size limits raises `PayloadTooLarge` (413) instead.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import APIException

from .drawing import DEFAULT_COLOR, MAX_WIDTH, DrawOptions, parse_color
from .images import OUTPUT_FORMATS
from .tck import (
    MAX_FIT_COORDINATE,
    MAX_FIT_POINTS,
    CurveSet,
    SplineInputError,
    parse_curves,
)


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The image is too large."
    default_code = "payload_too_large"


def spline_error(error: SplineInputError) -> serializers.ValidationError:
    return serializers.ValidationError({error.field: [error.message]})


def max_image_bytes() -> int:
    return int(settings.ZYPHER_MAX_BODY_BYTES)


def _too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image is {size} bytes, over the upload limit of {max_image_bytes()} bytes."
    )


@extend_schema_field(OpenApiTypes.BINARY)
class ImageBytesField(serializers.Field):
    """An uploaded file (multipart), base64 text or a data: URL (JSON); gives bytes."""

    default_error_messages = {
        "invalid": "image must be a file upload, or base64 text in JSON.",
        "base64": "image is not valid base64.",
    }

    def to_internal_value(self, data: Any) -> bytes:
        limit = max_image_bytes()
        if isinstance(data, UploadedFile):
            if data.size is not None and data.size > limit:
                raise _too_large(data.size)
            return data.read()
        if isinstance(data, bytes):
            if len(data) > limit:
                raise _too_large(len(data))
            return data
        if not isinstance(data, str):
            self.fail("invalid")
        text = data.strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        if len(text) * 3 // 4 > limit:
            raise _too_large(len(text) * 3 // 4)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self.fail("base64")

    def to_representation(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")


@extend_schema_field(OpenApiTypes.ANY)
class JsonValueField(serializers.Field):
    """A JSON value given natively (JSON body) or as JSON text (a form field)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            try:
                return json.loads(data)  # NaN and Infinity parse, to be refused by name later
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError(
                    f"{self.field_name} is not valid JSON: {exc}."
                ) from None
            except (ValueError, RecursionError) as exc:
                # Valid JSON Python will not read: an integer of over 4300 digits
                # (ValueError), arrays nested past the interpreter's recursion limit.
                raise serializers.ValidationError(
                    f"{self.field_name} cannot be read: {type(exc).__name__}: {exc}."
                ) from None
        return data

    def to_representation(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class RenderRequest:
    image: bytes
    curve_set: CurveSet
    options: DrawOptions
    format: str


class RenderRequestSerializer(serializers.Serializer):
    image = ImageBytesField(help_text="The image: a file (multipart) or base64 text (JSON).")
    tck = JsonValueField(
        required=False,
        help_text="[t, c, k], a dlabel shape {t, c, k} or a dlabel export "
        "{frame_size, annotations}; instead of t, c and k.",
    )
    t = JsonValueField(required=False, help_text="The knot vector (JSON list).")
    c = JsonValueField(
        required=False, help_text="Coefficients, [xs, ys] (2 x N) or [[x, y], ...] (N x 2)."
    )
    k = JsonValueField(required=False, help_text="The degree, 1 to 5.")
    color = serializers.CharField(required=False, default=DEFAULT_COLOR)
    width = serializers.FloatField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0.1,
        max_value=MAX_WIDTH,
        help_text="Line width in pixels; by default max(1.5, longest side / 256).",
    )
    show_control_points = serializers.BooleanField(required=False, default=False)
    show_knots = serializers.BooleanField(required=False, default=False)
    format = serializers.ChoiceField(
        choices=["same", *OUTPUT_FORMATS], required=False, default="same"
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        # DRF deep-copies every declared field for each request, running each field's
        # `__init__` again (a tenth of a millisecond here). These fields keep no state of a
        # request: a shallow copy, which `bind` then gives its own name and parent, is
        # enough, and the declared fields stay untouched for the next request.
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

    def validate_color(self, value: str) -> tuple[int, int, int, int]:
        try:
            return parse_color(value)
        except SplineInputError as error:
            raise serializers.ValidationError(error.message) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("t", "c", "k") if name in attrs]
        if "tck" in attrs and given:
            raise serializers.ValidationError({"tck": ["Give either tck or t, c and k, not both."]})
        try:
            if "tck" in attrs:
                attrs["curve_set"] = parse_curves(attrs["tck"])
            elif len(given) == 3:
                attrs["curve_set"] = parse_curves([attrs["t"], attrs["c"], attrs["k"]])
            else:
                missing = next(name for name in ("t", "c", "k") if name not in attrs)
                raise serializers.ValidationError(
                    {missing: [f"{missing} is required (or give all three as tck)."]}
                )
        except SplineInputError as error:
            raise spline_error(error) from None
        return attrs

    def to_request(self) -> RenderRequest:
        data = self.validated_data
        return RenderRequest(
            image=data["image"],
            curve_set=data["curve_set"],
            options=DrawOptions(
                color=data["color"],
                width=data["width"],
                show_control_points=data["show_control_points"],
                show_knots=data["show_knots"],
            ),
            format=data["format"],
        )


_DEFAULT_OPTIONS = DrawOptions(color=parse_color(DEFAULT_COLOR))


def lean_render_request(data: Any) -> RenderRequest | None:
    """`RenderRequestSerializer(data=data).to_request()` for the common upload, or None.

    The common upload is a form with an image file and a `tck` (JSON text) and nothing
    else. DRF's validation of it cost ~0.3 ms of the request's Python (its fields bound
    and run one by one), where reading the file and the curves is what matters. Anything
    else, and any input the curves' checks refuse, answers None: the caller asks the
    serializer, so every error is phrased where it always was
    (tests/splines/test_splines_lean_request.py holds the two to the same answers).
    """
    # A JSON body may be any JSON value: only a mapping is a form.
    if not isinstance(data, Mapping) or set(data) != {"image", "tck"}:
        return None
    image, tck = data.get("image"), data.get("tck")
    if not isinstance(image, UploadedFile | bytes) or not isinstance(tck, str):
        return None
    size = len(image) if isinstance(image, bytes) else image.size
    if size is None or size > max_image_bytes():
        return None
    try:
        curve_set = parse_curves(json.loads(tck))
    except (ValueError, RecursionError, SplineInputError):
        return None  # JSONDecodeError is a ValueError; the serializer names each problem
    return RenderRequest(
        image=image if isinstance(image, bytes) else image.read(),
        curve_set=curve_set,
        options=_DEFAULT_OPTIONS,
        format="same",
    )


@extend_schema_field(
    {
        "type": "array",
        "items": {
            "type": "array",
            "items": {
                "type": "number",
                "minimum": -MAX_FIT_COORDINATE,
                "maximum": MAX_FIT_COORDINATE,
            },
            "minItems": 2,
            "maxItems": 2,
        },
        "minItems": 2,
        "maxItems": MAX_FIT_POINTS,
    }
)
class PointsField(JsonValueField):
    """[[x, y], ...] (JSON text in a form): the schema says so, null is not a list of points."""


class FitRequestSerializer(serializers.Serializer):
    points = PointsField(help_text="The points to fit through, [[x, y], ...] in pixels.")
    k = serializers.IntegerField(required=False, default=3, min_value=1, max_value=5)
    smoothing = serializers.FloatField(required=False, default=0.0, min_value=0.0)
    closed = serializers.BooleanField(required=False, default=False)


class FitResponseSerializer(serializers.Serializer):
    t = serializers.ListField(child=serializers.FloatField())
    c = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    k = serializers.IntegerField()
    u = serializers.ListField(child=serializers.FloatField())
