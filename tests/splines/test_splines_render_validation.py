"""Every bad render request is a 400 naming its field with an actionable message, or a 413."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from django.test import override_settings
from PIL import Image
from rest_framework.test import APIClient

pytestmark = [pytest.mark.urls("splines.urls"), pytest.mark.one_pass]

URL = "/api/splines/render/"
T = [0, 0, 0, 0, 1, 1, 1, 1]
C = [[10, 60, 120, 150], [90, 10, 10, 90]]


def image_bytes(image_format: str = "PNG", size: tuple[int, int] = (160, 100)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 60, 20)).save(buffer, image_format)
    return buffer.getvalue()


def post_multipart(image: bytes | None = None, **fields: object):
    file = io.BytesIO(image if image is not None else image_bytes())
    file.name = "upload"
    data: dict[str, io.BytesIO | str] = {"image": file}
    data.update(
        {
            name: value if isinstance(value, str) else json.dumps(value)
            for name, value in fields.items()
        }
    )
    return APIClient().post(URL, data, format="multipart")


def error_for(response, field: str) -> str:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert field in body, body
    return " ".join(body[field])


def test_k_outside_one_to_five_names_k() -> None:
    message = error_for(post_multipart(t=T, c=C, k=6), "k")
    assert message == "k must be from 1 to 5 (the degree); got 6."


def test_knot_count_fitting_neither_layout_says_the_numbers() -> None:
    message = error_for(post_multipart(tck=[T[:-1], C, 3]), "t")
    assert message == (
        "len(t) must be N + k + 1: c holds N = 4 coefficients and k = 3, so t needs 8 knots, "
        "but it has 7."
    )


def test_decreasing_knots_name_t() -> None:
    message = error_for(
        post_multipart(tck=[[0, 0, 0, 0, 1, 0.5, 1, 1, 1], [[1, 2, 3, 4, 5]] * 2, 3]), "t"
    )
    assert message == "t must not decrease, but t[5] = 0.5 is less than t[4] = 1."


def test_c_in_neither_layout_names_c() -> None:
    message = error_for(post_multipart(tck=[T, [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], 3]), "c")
    assert "c must be [xs, ys] (2 x N, as scipy's splprep gives)" in message
    assert "got 3 rows of 4" in message


def test_nan_in_a_form_field_is_refused_by_name() -> None:
    c_nan = json.dumps(C).replace("60", "NaN", 1)
    message = error_for(post_multipart(t=T, c=c_nan, k=3), "c")
    assert message == "c[0][1] is NaN; every value must be a finite number."


def test_infinite_value_in_a_json_body_is_refused_by_name() -> None:
    image = base64.b64encode(image_bytes()).decode()
    # Written by hand: 1e999 is valid JSON that parses as infinity.
    body = (
        f'{{"image": "{image}", "t": [0, 0, 0, 0, 1, 1, 1, 1e999], "c": {json.dumps(C)}, "k": 3}}'
    )
    response = APIClient().post(URL, body, content_type="application/json")
    assert error_for(response, "t") == "t[7] is infinite; every value must be a finite number."


def test_too_few_coefficients_for_the_degree_names_c() -> None:
    message = error_for(post_multipart(tck=[[0, 0, 0, 1, 1, 1], [[1, 2], [3, 4]], 3]), "c")
    assert message == "c has 2 coefficients, too few for degree k = 3: it needs at least k + 1 = 4."


def test_absurdly_distant_control_points_name_c() -> None:
    message = error_for(post_multipart(tck=[[0, 0, 1, 1], [[0, 1e15], [0, 5]], 1]), "c")
    assert "too far from the 160 x 100 image" in message


def test_missing_curve_names_the_missing_field() -> None:
    assert "t is required" in error_for(post_multipart(c=C, k=3), "t")
    assert "not both" in error_for(post_multipart(tck=[T, C, 3], k=3), "tck")
    assert "not valid JSON" in error_for(post_multipart(tck="[0, 0,"), "tck")


def test_bad_colour_and_format_name_their_fields() -> None:
    assert "CSS hex colour" in error_for(post_multipart(tck=[T, C, 3], color="#12345"), "color")
    assert "bmp" in error_for(post_multipart(tck=[T, C, 3], format="bmp"), "format")
    assert error_for(post_multipart(tck=[T, C, 3], width="-2"), "width")


def test_something_that_is_not_an_image_names_image() -> None:
    message = error_for(post_multipart(b"hello, this is text", tck=[T, C, 3]), "image")
    assert message.startswith("image is not an image file")


def test_truncated_image_names_image() -> None:
    data = image_bytes("PNG", (400, 300))
    truncated = data[: len(data) // 2]
    message = error_for(post_multipart(truncated, tck=[T, C, 3]), "image")
    assert "truncated or corrupt PNG" in message


def test_unsupported_format_is_named_with_the_accepted_ones() -> None:
    message = error_for(post_multipart(image_bytes("PPM"), tck=[T, C, 3]), "image")
    assert message == (
        "image is in PPM format, which is not supported; send one of PNG, JPEG, WEBP, GIF, BMP, TIFF."
    )


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's opening."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_over_the_pixel_limit_is_a_413_before_it_is_decoded() -> None:
    response = post_multipart(png_claiming(8_000, 7_000), tck=[T, C, 3])
    assert response.status_code == 413
    assert response.json()["error"] == (
        "image is 8000 x 7000 = 56000000 pixels; at most 50000000 pixels are accepted."
    )


def test_decompression_bomb_far_over_the_limit_is_a_413() -> None:
    response = post_multipart(png_claiming(30_000, 30_000), tck=[T, C, 3])
    assert response.status_code == 413
    assert response.json()["error"] == (
        "image has over 100000000 pixels; at most 50000000 pixels are accepted."
    )


def test_pillow_limit_is_set_explicitly() -> None:
    import splines.images

    assert Image.MAX_IMAGE_PIXELS == splines.images.MAX_IMAGE_PIXELS == 50_000_000


def test_upload_over_the_size_limit_is_a_413() -> None:
    with override_settings(ZYPHER_MAX_BODY_BYTES=2_000):
        big = image_bytes("BMP", (100, 100))  # 30 kB uncompressed
        response = post_multipart(big, tck=[T, C, 3])
        assert response.status_code == 413
        assert "limit" in response.json()["error"]
