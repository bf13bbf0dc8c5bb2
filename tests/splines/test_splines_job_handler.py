"""The `spline` job kind renders like the API, stores the image and returns its URL."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from django.test import override_settings
from PIL import Image

from splines.handlers import render_spline_job

pytestmark = pytest.mark.one_pass

T = [0, 0, 0, 0, 1, 1, 1, 1]
C = [[10, 60, 120, 150], [90, 10, 10, 90]]


@pytest.fixture
def media(tmp_path: Path):
    with override_settings(MEDIA_ROOT=str(tmp_path), MEDIA_URL="/media/"):
        yield tmp_path


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 100), (20, 60, 20)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_job_reads_the_image_under_media_root_and_stores_the_result(media: Path) -> None:
    (media / "uploads").mkdir()
    (media / "uploads" / "frame.jpg").write_bytes(jpeg_bytes())
    result = render_spline_job({"image_path": "uploads/frame.jpg", "tck": [T, C, 3], "width": 5})
    assert result["image_url"] == "/media/" + result["image_path"]
    assert result["image_path"].startswith("splines/") and result["image_path"].endswith(".jpg")
    assert result["content_type"] == "image/jpeg"
    assert (result["width"], result["height"], result["line_width"]) == (160, 100, 5.0)
    assert result["outside_curves"] == [] and result["warnings"] == []
    stored = Image.open(media / result["image_path"]).convert("RGB")
    red, green, blue = np.asarray(stored, dtype=int).transpose(2, 0, 1)
    assert np.count_nonzero((red > 200) & (green < 80) & (blue > 200)) > 200
    assert not list((media / "splines").glob(".*.partial"))


def test_job_takes_a_media_url_or_inline_base64_and_t_c_k_fields(media: Path) -> None:
    (media / "frame.jpg").write_bytes(jpeg_bytes())
    by_url = render_spline_job({"image_path": "/media/frame.jpg", "t": T, "c": C, "k": 3})
    inline = render_spline_job(
        {"image_base64": base64.b64encode(jpeg_bytes()).decode(), "tck": [T, C, 3], "format": "png"}
    )
    assert (media / by_url["image_path"]).is_file()
    assert inline["content_type"] == "image/png" and inline["image_url"].endswith(".png")


def test_job_with_a_bad_tck_fails_with_the_field_and_message(media: Path) -> None:
    (media / "frame.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(ValueError, match=r"^k: k must be from 1 to 5 \(the degree\); got 8\.$"):
        render_spline_job({"image_path": "frame.jpg", "tck": [T, C, 8]})


def test_job_refuses_paths_outside_the_media_directory(media: Path) -> None:
    with pytest.raises(ValueError, match="not inside the media directory"):
        render_spline_job({"image_path": "../../etc/passwd", "tck": [T, C, 3]})
    with pytest.raises(ValueError, match="no file 'missing.png'"):
        render_spline_job({"image_path": "missing.png", "tck": [T, C, 3]})


def test_job_needs_exactly_one_image_reference(media: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of image_path or image_base64"):
        render_spline_job({"tck": [T, C, 3]})


def test_job_with_an_unreadable_image_fails_naming_image(media: Path) -> None:
    inline = base64.b64encode(b"not an image").decode()
    with pytest.raises(ValueError, match=r"^image: image is not an image file"):
        render_spline_job({"image_base64": inline, "tck": [T, C, 3]})


def test_job_image_over_the_upload_limit_fails(media: Path) -> None:
    with override_settings(ZYPHER_MAX_BODY_BYTES=100):
        inline = base64.b64encode(jpeg_bytes()).decode()
        with pytest.raises(ValueError, match="over the upload limit of 100 bytes"):
            render_spline_job({"image_base64": inline, "tck": [T, C, 3]})


@pytest.mark.urls("splines.urls")
def test_stored_result_is_served_at_its_url(media: Path, client) -> None:
    (media / "frame.jpg").write_bytes(jpeg_bytes())
    result = render_spline_job({"image_path": "frame.jpg", "tck": [T, C, 3]})
    response = client.get(result["image_url"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (media / result["image_path"]).read_bytes()
    assert client.get("/media/splines/../frame.jpg").status_code == 404
