"""POST /api/splines/render/ draws the curve from multipart or JSON and answers the image."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from rest_framework import serializers
from rest_framework.test import APIClient

pytestmark = [pytest.mark.urls("splines.urls"), pytest.mark.one_pass]

URL = "/api/splines/render/"
T = [0, 0, 0, 0, 1, 1, 1, 1]
C_ROWS = [[10, 60, 120, 150], [90, 10, 10, 90]]


def png_bytes(
    size: tuple[int, int] = (160, 100), color: tuple[int, int, int] = (20, 60, 20)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def upload(data: bytes, name: str = "frame.png") -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file


def magenta_pixels(content: bytes) -> int:
    array = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"), dtype=int)
    return int(
        np.count_nonzero((array[..., 0] > 200) & (array[..., 1] < 60) & (array[..., 2] > 200))
    )


def test_multipart_with_t_c_k_fields_answers_the_png_with_the_curve() -> None:
    response = APIClient().post(
        URL,
        {"image": upload(png_bytes()), "t": json.dumps(T), "c": json.dumps(C_ROWS), "k": "3"},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png"
    assert response["X-Spline-Line-Width"] == "1.5"
    assert "X-Spline-Warning" not in response
    assert magenta_pixels(response.content) > 100


def test_multipart_with_one_tck_field_and_options() -> None:
    response = APIClient().post(
        URL,
        {
            "image": upload(png_bytes()),
            "tck": json.dumps([T, C_ROWS, 3]),
            "color": "#00ff00",
            "width": "6",
            "show_control_points": "true",
            "format": "jpeg",
        },
        format="multipart",
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Spline-Line-Width"] == "6"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    green = np.asarray(image.convert("RGB"), dtype=int)
    assert np.count_nonzero((green[..., 1] > 220) & (green[..., 0] < 60)) > 300


def test_json_with_base64_image_and_dlabel_shape() -> None:
    points = [[x, y] for x, y in zip(*C_ROWS, strict=True)]
    payload = {
        "image": base64.b64encode(png_bytes()).decode(),
        "tck": {"t": T, "c": points, "k": 3},
    }
    response = APIClient().post(URL, payload, format="json")
    assert response.status_code == 200, response.content
    assert magenta_pixels(response.content) > 100


def test_json_accepts_a_data_url_and_a_dlabel_export_scaled_from_its_frame_size() -> None:
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    doubled = [[x * 2, y * 2] for x, y in zip(*C_ROWS, strict=True)]  # the frame is 2x the upload
    shifted = [[x * 2, y * 2 + 40] for x, y in zip(*C_ROWS, strict=True)]
    client = APIClient()

    def render(tck: object) -> np.ndarray:
        response = client.post(URL, {"image": image, "tck": tck}, format="json")
        assert response.status_code == 200, response.content
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))

    one = {"frame_size": [320, 200], "annotations": [{"shape": {"t": T, "c": doubled, "k": 3}}]}
    np.testing.assert_array_equal(render(one), render([T, C_ROWS, 3]))
    two = {
        "frame_size": [320, 200],
        "annotations": [
            {"shape": {"t": T, "c": doubled, "k": 3}},
            {"shape": {"t": T, "c": shifted, "k": 3}},
        ],
    }
    background = np.array([20, 60, 20])
    drawn_one = np.count_nonzero(np.any(render(one) != background, axis=2))
    drawn_two = np.count_nonzero(np.any(render(two) != background, axis=2))
    assert drawn_two > 1.5 * drawn_one


def test_curve_outside_the_image_is_a_200_with_a_warning_header() -> None:
    far = [[0, 0, 1, 1], [[1000, 1200], [900, 950]], 1]
    response = APIClient().post(
        URL, {"image": upload(png_bytes()), "tck": json.dumps(far)}, format="multipart"
    )
    assert response.status_code == 200
    assert response["X-Spline-Outside-Curves"] == "0"
    assert "entirely outside the image" in response["X-Spline-Warning"]
    assert magenta_pixels(response.content) == 0


def test_errors_are_json_even_for_a_client_that_accepts_only_images() -> None:
    response = APIClient().post(
        URL,
        {"image": upload(png_bytes()), "tck": json.dumps([T, C_ROWS, 9])},
        format="multipart",
        HTTP_ACCEPT="image/png",
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "k" in response.json()


def test_each_request_validates_with_fields_of_its_own() -> None:
    # The serializer copies its declared fields per request (shallowly): two requests'
    # fields are bound to their own serializer, and the declared ones stay unbound.
    from splines.serializers import RenderRequestSerializer

    first = RenderRequestSerializer(data={"image": png_bytes(), "t": T, "c": C_ROWS, "k": 3})
    second = RenderRequestSerializer(data={"image": png_bytes(), "tck": "[", "width": "0"})
    assert first.is_valid() and not second.is_valid()
    assert set(second.errors) == {"tck", "width"}
    assert first.validated_data["width"] is None and first.validated_data["color"][3] == 255
    for name, field in first.fields.items():
        assert field is not second.fields[name]
        assert field.parent is first and second.fields[name].parent is second
        declared = RenderRequestSerializer._declared_fields[name]
        assert declared.field_name is None or not hasattr(declared, "parent")
    width = first.fields["width"]
    assert isinstance(width, serializers.FloatField)
    assert (width.min_value, width.max_value, width.allow_null) == (0.1, 1000.0, True)
