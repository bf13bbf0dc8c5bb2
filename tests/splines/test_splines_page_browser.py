"""The /splines/ page in a real browser: upload an image, give a curve, see the picture."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

pytest_plugins = ["tests.support.browser"]

pytestmark = [pytest.mark.urls("splines.urls"), pytest.mark.one_pass]


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def grey_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 120), (128, 128, 128)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


# How many pixels of the result <img> are the default ink (#ff00ff), read back by the page.
COUNT_MAGENTA = """(img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > 200 && data[i + 1] < 60 && data[i + 2] > 200) count++;
  }
  return count;
}"""


def test_upload_render_and_see_the_curve(live_server, page, tmp_path: Path) -> None:
    page.goto(live_server.url + "/splines/")
    page.set_input_files("#image", str(grey_png(tmp_path / "grey.png")))
    tck = [[0, 0, 0, 0, 1, 1, 1, 1], [[10, 70, 130, 190], [100, 10, 110, 20]], 3]
    page.fill("#tck", json.dumps(tck))
    page.click("#render")
    result = page.locator("#result")
    result.wait_for(state="visible", timeout=15_000)
    page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=15_000)
    assert page.eval_on_selector("#result", "img => img.naturalWidth") == 200
    assert result.evaluate(COUNT_MAGENTA) > 150
    assert page.locator("#download").get_attribute("download") == "spline.png"
    assert page.text_content("#error") == ""


def test_clicked_points_are_fitted_into_a_tck(live_server, page, tmp_path: Path) -> None:
    page.goto(live_server.url + "/splines/")
    page.set_input_files("#image", str(grey_png(tmp_path / "grey.png")))
    page.wait_for_function("document.getElementById('preview').width === 200")
    canvas = page.locator("#preview")
    box = canvas.bounding_box()
    assert box is not None
    for x, y in ((20, 100), (70, 20), (130, 100), (180, 20)):
        canvas.click(position={"x": x * box["width"] / 200, "y": y * box["height"] / 120})
    page.click("#fit")
    page.wait_for_function("document.getElementById('tck').value.length > 0", timeout=15_000)
    t, c, k = json.loads(page.input_value("#tck"))
    assert k == 3 and len(c) == 2 and len(t) == len(c[0]) + k + 1
    page.click("#render")
    page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=15_000)
    assert page.locator("#result").evaluate(COUNT_MAGENTA) > 150


def test_a_bad_tck_shows_the_field_and_message(live_server, page, tmp_path: Path) -> None:
    page.goto(live_server.url + "/splines/")
    page.set_input_files("#image", str(grey_png(tmp_path / "grey.png")))
    page.fill("#tck", json.dumps([[0, 0, 0, 0, 1, 1, 1, 1], [[1, 2, 3, 4], [1, 2, 3, 4]], 9]))
    page.click("#render")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert page.text_content("#error") == "k: k must be from 1 to 5 (the degree); got 9."
