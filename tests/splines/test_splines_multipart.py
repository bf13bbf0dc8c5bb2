"""The render API's lean multipart parser: the plain shape clients send is parsed without
Django's streaming parser, and gives exactly what Django's parser gives; anything else
goes to Django's parser, and hostile bodies are a clear 4xx, never a 500."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.files.uploadedfile import UploadedFile
from django.http import QueryDict
from django.test import RequestFactory
from django.test.client import BOUNDARY, encode_multipart
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.test import APIClient

from splines.parsers import LeanMultiPartParser, parse_plain_multipart

pytestmark = [pytest.mark.urls("splines.urls"), pytest.mark.one_pass]

URL = "/api/splines/render/"
TCK = "[[0, 0, 1, 1], [[2, 30], [10, 10]], 1]"
MEDIA_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (20, 60, 20)).save(buffer, "PNG")
    return buffer.getvalue()


def plain_body() -> bytes:
    upload = io.BytesIO(png())
    upload.name = "frame.png"
    return encode_multipart(BOUNDARY, {"image": upload, "tck": TCK, "color": "#00ff00"})


def part(headers: list[str], content: bytes) -> bytes:
    head = "".join(f"{line}\r\n" for line in headers).encode()
    return f"--{BOUNDARY}\r\n".encode() + head + b"\r\n" + content + b"\r\n"


def body_of(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    return preamble + b"".join(parts) + f"--{BOUNDARY}--\r\n".encode() + epilogue


def image_part(disposition: str = 'form-data; name="image"; filename="frame.png"') -> bytes:
    return part([f"Content-Disposition: {disposition}", "Content-Type: image/png"], png())


def tck_part() -> bytes:
    return part(['Content-Disposition: form-data; name="tck"'], TCK.encode())


def parsed(parser: type[MultiPartParser], body: bytes) -> tuple[dict, dict]:
    """Fields and files (name, content type, bytes) as the render view's parser sees them."""
    request = RequestFactory().post(URL, body, content_type=MEDIA_TYPE)
    data = Request(request, parsers=[parser()]).data
    assert isinstance(data, QueryDict)
    fields: dict[str, list[str]] = {}
    files: dict[str, list[tuple[str | None, str | None, bytes]]] = {}
    for key in data:
        for value in data.getlist(key):
            if isinstance(value, UploadedFile):
                files.setdefault(key, []).append((value.name, value.content_type, value.read()))
            else:
                fields.setdefault(key, []).append(value)
    return fields, files


def test_the_plain_shape_takes_the_lean_path_and_parses_as_django_does() -> None:
    body = plain_body()
    lean = parse_plain_multipart(body, MEDIA_TYPE, "utf-8")
    assert lean is not None
    assert lean.files["image"].read() == png()
    assert parsed(LeanMultiPartParser, body) == parsed(MultiPartParser, body)
    fields, files = parsed(LeanMultiPartParser, body)
    assert fields == {"tck": [TCK], "color": ["#00ff00"]}
    assert files == {"image": [("frame.png", "image/png", png())]}


UNUSUAL = {
    "preamble": body_of(image_part(), tck_part(), preamble=b"ignore me\r\n"),
    "epilogue": body_of(image_part(), tck_part(), epilogue=b"trailing words"),
    "transfer encoding": body_of(
        part(
            [
                'Content-Disposition: form-data; name="image"; filename="frame.png"',
                "Content-Transfer-Encoding: binary",
            ],
            png(),
        ),
        tck_part(),
    ),
    "rfc 2231 filename": body_of(
        image_part("form-data; name=\"image\"; filename*=UTF-8''fr%C3%A4me.png"), tck_part()
    ),
    "path in filename": body_of(
        image_part('form-data; name="image"; filename="C:\\\\x\\\\frame.png"'), tck_part()
    ),
    "html entity in filename": body_of(
        image_part('form-data; name="image"; filename="a&amp;b.png"'), tck_part()
    ),
    "empty filename": body_of(image_part('form-data; name="image"; filename=""'), tck_part()),
    "charset on a field": body_of(
        image_part(),
        part(
            [
                'Content-Disposition: form-data; name="tck"',
                "Content-Type: text/plain; charset=utf-8",
            ],
            TCK.encode(),
        ),
    ),
    "not utf-8 text": body_of(
        image_part(), tck_part(), part(['Content-Disposition: form-data; name="color"'], b"\xff")
    ),
    "upper-case headers": body_of(
        part(
            [
                'CONTENT-DISPOSITION: form-data; name="image"; filename="frame.png"',
                "CONTENT-TYPE: image/png",
            ],
            png(),
        ),
        tck_part(),
    ),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_bodies_parse_exactly_as_django_parses_them(name: str) -> None:
    body = UNUSUAL[name]
    assert parsed(LeanMultiPartParser, body) == parsed(MultiPartParser, body)


def test_the_api_draws_on_an_upload_whichever_parser_took_it() -> None:
    for body in (plain_body(), UNUSUAL["preamble"], UNUSUAL["transfer encoding"]):
        response = APIClient().post(URL, body, content_type=MEDIA_TYPE)
        assert response.status_code == 200, response.content[:300]
        assert Image.open(io.BytesIO(response.content)).size == (40, 20)


def assert_clear_4xx_or_image(response: Any) -> None:
    assert response.status_code < 500, response.content[:300]
    if response.status_code != 200:
        assert response["Content-Type"].startswith("application/json")
        assert response.json()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data())
def test_mangled_bodies_are_a_clear_4xx_or_an_image_and_never_parse_differently(
    data: st.DataObject,
) -> None:
    body = bytearray(plain_body())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(["cut", "insert", "flip", "truncate"]))
        if action == "cut":
            del body[at : at + data.draw(st.integers(1, 40))]
        elif action == "insert":
            body[at:at] = data.draw(
                st.sampled_from([b"\r\n", b"--", BOUNDARY.encode(), b'"', b";", b"\r\n\r\n"])
            )
        elif action == "flip" and at < len(body):
            body[at] ^= data.draw(st.integers(1, 255))
        else:
            del body[at:]
    mangled = bytes(body)
    lean = parse_plain_multipart(mangled, MEDIA_TYPE, "utf-8")
    if lean is not None:
        assert parsed(LeanMultiPartParser, mangled) == parsed(MultiPartParser, mangled)
    response = APIClient().post(URL, mangled, content_type=MEDIA_TYPE)
    assert_clear_4xx_or_image(response)
