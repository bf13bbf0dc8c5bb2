"""Hostile input to the spline render API: malformed and truncated images, decompression
bombs, every image mode, random tck values. Each is answered with a clear 4xx (a JSON
body naming the problem) or a correct image; never a 500, never a hang."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from rest_framework.test import APIClient

pytestmark = pytest.mark.one_pass

RENDER_URL = "/api/splines/render/"
LINE = [[0, 0, 1, 1], [[2, 30], [10, 10]], 1]
HOSTILE = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


def post(image: bytes, tck: Any = LINE, **extra: Any) -> Any:
    body = {"image": base64.b64encode(image).decode(), "tck": tck, **extra}
    # Encoded by hand: a hostile client sends NaN and Infinity tokens, which DRF's test
    # client would refuse to encode before anything reaches the server.
    payload = json.dumps(body, allow_nan=True)
    started = time.monotonic()
    response = APIClient().post(RENDER_URL, payload, content_type="application/json")
    assert time.monotonic() - started < 10, "no request may hang"
    return response


def assert_clear_4xx_or_image(response: Any, size: tuple[int, int] | None = None) -> None:
    assert response.status_code < 500, response.content[:300]
    if response.status_code == 200:
        image = Image.open(io.BytesIO(response.content))
        image.load()
        if size is not None:
            assert image.size == size
    else:
        assert 400 <= response.status_code < 500
        assert response["Content-Type"].startswith("application/json")
        body = response.json()
        assert body and all(isinstance(key, str) for key in body)


def encoded(mode: str, image_format: str, size: tuple[int, int] = (40, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, image_format)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


@HOSTILE
@given(st.binary(max_size=2048))
def test_random_bytes_are_a_clear_4xx(data: bytes) -> None:
    assert_clear_4xx_or_image(post(data))


@HOSTILE
@given(
    st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]),
    st.floats(min_value=0.0, max_value=0.99),
)
def test_truncated_images_are_a_clear_4xx_or_a_whole_image(image_format: str, kept: float) -> None:
    data = encoded("RGB" if image_format != "GIF" else "P", image_format)
    assert_clear_4xx_or_image(post(data[: int(len(data) * kept)]), size=(40, 20))


@pytest.mark.parametrize(
    "size", [(100_000, 100_000), (60_000, 1), (1, 2**31 - 1), (20_000, 20_000)]
)
def test_decompression_bombs_are_refused_fast(size: tuple[int, int]) -> None:
    response = post(png_claiming(*size))
    assert response.status_code in (400, 413), response.content[:300]
    assert "error" in response.json() or "image" in response.json()


MODES_BY_FORMAT = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "I;16"],
}


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [(fmt, mode) for fmt, modes in MODES_BY_FORMAT.items() for mode in modes],
)
def test_every_image_mode_is_drawn_on_or_refused_clearly(image_format: str, mode: str) -> None:
    assert_clear_4xx_or_image(post(encoded(mode, image_format)), size=(40, 20))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=40,
)
numbers = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.integers(-(10**6), 10**6)


@HOSTILE
@given(json_values)
def test_random_tck_json_is_a_clear_4xx_or_an_image(tck: Any) -> None:
    assert_clear_4xx_or_image(post(encoded("RGB", "PNG"), tck=tck), size=(40, 20))


@HOSTILE
@given(
    st.lists(numbers, min_size=0, max_size=30),
    st.lists(st.lists(numbers, min_size=0, max_size=30), min_size=0, max_size=3),
    st.one_of(st.integers(-3, 9), numbers),
)
def test_random_t_c_k_numbers_are_a_clear_4xx_or_an_image(t: Any, c: Any, k: Any) -> None:
    assert_clear_4xx_or_image(post(encoded("RGB", "PNG"), tck=[t, c, k]), size=(40, 20))
