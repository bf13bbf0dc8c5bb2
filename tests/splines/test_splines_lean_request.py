"""The render request's lean validation agrees with the serializer it stands in for.

`lean_render_request` takes the common upload (an image file and a `tck`, nothing else)
without DRF's field machinery; whatever it takes must give exactly what
`RenderRequestSerializer` gives, and whatever the serializer refuses it must leave to the
serializer (None), so every 400 and 413 stays phrased where it always was.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import QueryDict
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from splines.serializers import RenderRequest, RenderRequestSerializer, lean_render_request

KNOTS = [0, 0, 0, 0, 0.5, 1, 1, 1, 1]
XS, YS = [10, 60, 120, 180, 230], [40, 200, 20, 180, 60]
CUBIC: list[Any] = [KNOTS, [XS, YS], 3]
POINTS = [list(point) for point in zip(XS, YS, strict=True)]
LIMIT = 64
RENDER_URL = "/api/splines/render/"
FIT_URL = "/api/splines/fit/"
LINE_SHAPE = {"t": [0, 0, 1, 1], "c": [[2, 30], [10, 10]], "k": 1}

numbers = st.integers(-5, 300) | st.floats(allow_nan=True, allow_infinity=True)
tck_values = st.one_of(
    st.just(CUBIC),
    st.just({"t": CUBIC[0], "c": POINTS, "k": 3}),
    st.just(
        {
            "frame_size": [640, 480],
            "annotations": [{"shape": {"t": CUBIC[0], "c": POINTS, "k": 3}}],
        }
    ),
    st.tuples(
        st.lists(numbers, max_size=10),
        st.lists(st.lists(numbers, max_size=6), max_size=3),
        st.integers(-1, 6),
    ).map(list),
    st.recursive(
        st.none() | st.booleans() | numbers | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=3),
        max_leaves=6,
    ),
)
tck_texts = tck_values.map(json.dumps) | st.sampled_from(["", "[", "NaN", "[1, 2", "null"])
extra_fields = st.dictionaries(
    st.sampled_from(["color", "width", "format", "t", "show_knots", "other"]),
    st.sampled_from(["red", "2", "png", "[0, 1]", "true", ""]),
    max_size=2,
)


def form(image: bytes | None, tck: str | None, extra: dict[str, str]) -> QueryDict:
    data = QueryDict(mutable=True)
    if tck is not None:
        data["tck"] = tck
    for name, value in extra.items():
        data[name] = value
    if image is not None:
        data["image"] = SimpleUploadedFile("photo.jpg", image, "image/jpeg")  # type: ignore[assignment]
    return data


def same(lean: RenderRequest, full: RenderRequest) -> bool:
    if (lean.image, lean.options, lean.format) != (full.image, full.options, full.format):
        return False
    if lean.curve_set.frame_size != full.curve_set.frame_size:
        return False
    pairs = list(zip(lean.curve_set.curves, full.curve_set.curves, strict=True))
    return all(
        np.array_equal(a.t, b.t)
        and np.array_equal(a.points, b.points)
        and (a.k, a.layout) == (b.k, b.layout)
        for a, b in pairs
    )


@override_settings(ZYPHER_MAX_BODY_BYTES=LIMIT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=st.none()
    | st.binary(max_size=LIMIT + 8)
    | st.sampled_from([b"x" * LIMIT, b"x" * (LIMIT + 1)]),  # the limit's edge
    tck=st.none() | tck_texts,
    extra=extra_fields,
)
def test_what_the_lean_path_takes_the_serializer_validates_to_the_same_request(
    image: bytes | None, tck: str | None, extra: dict[str, Any]
) -> None:
    lean = lean_render_request(form(image, tck, extra))
    if lean is None:
        return  # the serializer answers, as before
    serializer = RenderRequestSerializer(data=form(image, tck, extra))
    assert serializer.is_valid(), serializer.errors
    assert same(lean, serializer.to_request())


def test_the_common_upload_takes_the_lean_path_and_others_do_not() -> None:
    image = b"\xff\xd8 an image"
    assert lean_render_request(form(image, json.dumps(CUBIC), {})) is not None
    assert lean_render_request(form(image, json.dumps(CUBIC), {"width": "2"})) is None
    assert lean_render_request(form(image, "[1, 2", {})) is None
    with override_settings(ZYPHER_MAX_BODY_BYTES=4):
        assert lean_render_request(form(image, json.dumps(CUBIC), {})) is None


@pytest.mark.parametrize("body", ['["image", "tck"]', '["tck", "image"]', "1", "true", "null"])
def test_a_json_body_that_is_no_object_is_a_400_as_the_serializer_answers(body: str) -> None:
    # The lean path read any body whose iteration gave the two names as a form (a list),
    # or iterated a number: a 500 where the serializer names the problem.
    response = APIClient().post(RENDER_URL, body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response.json()


@pytest.mark.parametrize(
    "tck",
    [
        "[" + "9" * 5000 + ", 1, 1]",  # over Python's 4300 digits
        "[" * 100_000 + "]" * 100_000,  # past the recursion limit
        "[[0, 1e400], [1], 1]",
        # Integers JSON holds and a float does not (over 1.8e308).
        f"[[0, 0, 1, {10**400}], [[2, 30], [10, 10]], 1]",
        f"[[0, 0, 1, 1], [[2, {10**400}], [10, 10]], 1]",
        json.dumps({"frame_size": [10**400, 2], "annotations": [{"shape": LINE_SHAPE}]}),
    ],
)
def test_a_tck_text_python_cannot_read_is_a_400_not_a_500(tck: str) -> None:
    image = SimpleUploadedFile("photo.png", b"\x89PNG not really", "image/png")
    response = APIClient().post(RENDER_URL, {"image": image, "tck": tck}, format="multipart")
    assert 400 <= response.status_code < 500, response.content[:300]
    assert response.json()


def test_fit_points_over_a_floats_range_are_a_400_not_a_500() -> None:
    points = f"[[0, 0], [5, {10**400}], [9, 9]]"
    response = APIClient().post(FIT_URL, {"points": points}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert "points" in response.json()


@pytest.mark.parametrize("url", [RENDER_URL, FIT_URL])
def test_a_json_body_nested_past_the_recursion_limit_is_a_400(url: str) -> None:
    # The splines views took DRF's JSONParser, not the API's (jobs.api.parsers), which
    # answers a body nested too deeply to parse with a 400.
    body = '{"tck": ' + "[" * 100_000 + "]" * 100_000 + ', "image": "AA=="}'
    response = APIClient().post(url, body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response.json()
