"""The `spline` job kind: render through the fair queue and store the result as a file.

Registered in the core's handler registry as `splines.handlers:render_spline_job`; it runs
in a dispatcher's worker process. Its input is the render API's fields as JSON, with the
image given by reference or inline:

    {"image_path": "uploads/frame-0001.jpg",      # under MEDIA_ROOT (or "/media/...")
     "tck": [t, c, k],                             # or "t", "c", "k"; or a dlabel shape/export
     "color": "#ff00ff", "width": 3, "format": "same",
     "show_control_points": false, "show_knots": false}

`image_base64` may stand instead of `image_path`. The result names the stored file:

    {"image_url": "/media/splines/<uuid>.jpg", "image_path": "splines/<uuid>.jpg",
     "content_type": "image/jpeg", "width": 1024, "height": 768, "line_width": 4.0,
     "curves": 1, "outside_curves": [], "warnings": []}

Bad input raises `ValueError` whose message names the field, which fails the job with it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from rest_framework.exceptions import APIException

from .images import ImageInputError
from .render import render_spline
from .serializers import RenderRequestSerializer
from .tck import SplineInputError

OUTPUT_SUBDIRECTORY = "splines"


def media_root() -> Path:
    return Path(settings.MEDIA_ROOT or Path(settings.BASE_DIR) / "var" / "media")


def media_url() -> str:
    url = settings.MEDIA_URL or "/media/"
    return url if url.endswith("/") else url + "/"


def read_media_file(reference: str) -> bytes:
    """The bytes of a file under MEDIA_ROOT, given relative to it or as a MEDIA_URL path."""
    if reference.startswith(media_url()):
        reference = reference[len(media_url()) :]
    root = media_root().resolve()
    path = (root / reference).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"image_path: {reference!r} is not inside the media directory.")
    if not path.is_file():
        raise ValueError(f"image_path: no file {reference!r} in the media directory.")
    return path.read_bytes()


def _flatten_errors(errors: Any, prefix: str = "") -> list[str]:
    if isinstance(errors, dict):
        return [m for key, value in errors.items() for m in _flatten_errors(value, f"{key}: ")]
    if isinstance(errors, list):
        return [m for value in errors for m in _flatten_errors(value, prefix)]
    return [f"{prefix}{errors}"]


def store_output(data: bytes, extension: str) -> str:
    """Write the image under MEDIA_ROOT/splines/ and return its path relative to MEDIA_ROOT."""
    directory = media_root() / OUTPUT_SUBDIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.{extension}"
    partial = directory / f".{name}.partial"
    partial.write_bytes(data)
    os.replace(partial, directory / name)  # readers never see half a file
    return f"{OUTPUT_SUBDIRECTORY}/{name}"


def render_spline_job(input: dict[str, Any]) -> dict[str, Any]:
    """Render one image as the render API would, store it, and describe the stored file."""
    if not isinstance(input, dict):
        raise ValueError("input must be a JSON object with image_path (or image_base64) and tck.")
    fields = dict(input)
    path, inline = fields.pop("image_path", None), fields.pop("image_base64", None)
    if (path is None) == (inline is None):
        raise ValueError("image_path: give exactly one of image_path or image_base64.")
    fields["image"] = read_media_file(str(path)) if path is not None else inline
    serializer = RenderRequestSerializer(data=fields)
    try:
        valid = serializer.is_valid()
    except APIException as error:  # an image over the size limit
        raise ValueError(f"image: {error.detail}") from None
    if not valid:
        raise ValueError("; ".join(_flatten_errors(serializer.errors)))
    request = serializer.to_request()
    try:
        rendered = render_spline(
            image_data=request.image,
            curve_set=request.curve_set,
            options=request.options,
            requested_format=request.format,
        )
    except ImageInputError as error:
        raise ValueError(f"image: {error.message}") from None
    except SplineInputError as error:
        raise ValueError(str(error)) from None
    stored = store_output(rendered.data, rendered.extension)
    return {
        "image_url": media_url() + stored,
        "image_path": stored,
        "content_type": rendered.content_type,
        "format": rendered.format.lower(),
        "width": rendered.width,
        "height": rendered.height,
        "line_width": rendered.line_width,
        "curves": rendered.curves,
        "outside_curves": rendered.outside,
        "warnings": rendered.warnings,
    }
