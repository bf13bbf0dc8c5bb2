"""The drawn curve is where SciPy says it is, as wide as asked, with exact-coverage edges."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.interpolate import splev, splprep  # type: ignore[import-untyped]  # no stubs installed
from scipy.spatial import cKDTree  # type: ignore[import-untyped]  # no stubs installed

from splines.coverage import coverage_error, dense_curve, exact_coverage
from splines.drawing import DrawOptions, default_width, draw_curves
from splines.render import render_spline
from splines.tck import CurveSet, SplineInputError, parse_curves, validate_tck

pytestmark = pytest.mark.one_pass

RNG = np.random.default_rng(6)


def noise_png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    width, height = size
    bands = {"RGB": 3, "L": 1}[mode]
    array = RNG.integers(0, 256, (height, width, bands), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if bands == 1 else array, mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def drawn_pixels(before: bytes, after: bytes) -> np.ndarray:
    """(x, y) of every pixel the render changed."""
    old = np.asarray(Image.open(io.BytesIO(before)).convert("RGB"), dtype=int)
    new = np.asarray(Image.open(io.BytesIO(after)).convert("RGB"), dtype=int)
    rows, columns = np.nonzero(np.any(old != new, axis=2))
    return np.column_stack([columns, rows]).astype(float)


def scipy_tck(points: list[tuple[float, float]], k: int, periodic: bool = False):
    xs, ys = zip(*points, strict=True)
    (t, c, k_out), _ = splprep([xs, ys], k=k, s=0, per=int(periodic))
    return t, c, k_out


CASES = [
    # (image size, image mode, clicked points, k, periodic, width, layout)
    (
        (320, 200),
        "RGB",
        [(10, 20), (80, 150), (160, 40), (250, 180), (300, 30)],
        3,
        False,
        None,
        "scipy",
    ),
    (
        (640, 480),
        "L",
        [(100, 100), (500, 80), (560, 400), (120, 420), (300, 250)],
        3,
        True,
        6.0,
        "points",
    ),
    ((200, 200), "RGB", [(-80, 50), (60, 120), (150, 20), (260, 180)], 2, False, 3.0, "points"),
    (
        (256, 128),
        "RGB",
        [(5, 5), (40, 120), (90, 10), (140, 120), (190, 5), (250, 120)],
        5,
        False,
        1.0,
        "scipy",
    ),
]


@pytest.mark.parametrize(("size", "mode", "points", "k", "periodic", "width", "layout"), CASES)
def test_every_scipy_sample_has_a_drawn_pixel_within_half_the_width_plus_one(
    size, mode, points, k, periodic, width, layout
) -> None:
    t, c, k = scipy_tck(points, k, periodic)
    tck_value: list[Any] | dict[str, Any]
    if layout == "scipy":
        tck_value = [t.tolist(), [c[0].tolist(), c[1].tolist()], k]
    else:
        tck_value = {"t": t.tolist(), "c": np.column_stack(c).tolist(), "k": k}
    image = noise_png(size, mode)
    rendered = render_spline(
        image, parse_curves(tck_value), DrawOptions(color=(255, 0, 255, 255), width=width)
    )
    line_width = width if width is not None else default_width(size)
    assert rendered.line_width == line_width
    drawn = drawn_pixels(image, rendered.data)
    assert len(drawn) > 0

    samples = np.array(splev(np.linspace(0, 1, 3000), (t, c, k))).T
    inside = (
        (samples[:, 0] >= 0)
        & (samples[:, 0] <= size[0] - 1)
        & (samples[:, 1] >= 0)
        & (samples[:, 1] <= size[1] - 1)
    )
    tolerance = line_width / 2 + 1
    nearest_drawn, _ = cKDTree(drawn).query(samples[inside])
    assert nearest_drawn.max() <= tolerance
    # ...and no ink anywhere else.
    nearest_curve, _ = cKDTree(samples).query(drawn)
    assert nearest_curve.max() <= tolerance


def test_stroke_coverage_is_within_a_few_percent_of_an_exact_stroke() -> None:
    t, c, k = scipy_tck([(13, 13), (51, 67), (99, 27), (123, 83), (91, 115), (35, 99)], 3)
    tck = validate_tck(t.tolist(), [c[0].tolist(), c[1].tolist()], k)
    size = (128, 128)
    for width, limit in ((1.0, 0.08), (3.5, 0.03), (8.0, 0.015)):
        image = Image.new("L", size, 0)
        drawn, _ = draw_curves(image, [tck], DrawOptions(color=(255, 255, 255, 255), width=width))
        exact = exact_coverage(dense_curve(tck), width, size, supersample=8)
        error = coverage_error(np.asarray(drawn) / 255.0, exact)
        assert error["relative"] <= limit, (width, error)
        assert error["max_pixel"] <= 0.2, (width, error)


def test_ends_are_round() -> None:
    tck = validate_tck([0, 0, 1, 1], [[20, 40], [60, 40]], 1, ambiguous_layout="points")
    image = Image.new("L", (80, 80), 0)
    drawn, _ = draw_curves(image, [tck], DrawOptions(color=(255, 255, 255, 255), width=10))
    coverage = np.asarray(drawn) / 255.0
    assert coverage[40, 16] > 0.9  # the cap reaches 5 px beyond the end on the axis...
    assert coverage[36, 16] < 0.5  # ...but not at the corner a square end would fill
    assert coverage[40, 14] < 0.1


def test_curve_entirely_outside_the_image_draws_nothing_and_says_so() -> None:
    image = noise_png((100, 100))
    far = [[0, 0, 1, 1], [[300, 400], [300, 320]], 1]
    near = [[0, 0, 1, 1], [[10, 90], [10, 90]], 1]
    rendered = render_spline(image, CurveSet(parse_curves(far).curves + parse_curves(near).curves))
    assert rendered.outside == [0]
    assert rendered.warnings == [
        "curve 0 lies entirely outside the image; nothing was drawn for it."
    ]
    only_far = render_spline(image, parse_curves(far))
    assert len(drawn_pixels(image, only_far.data)) == 0


def test_control_points_absurdly_far_away_are_refused_not_overflowed() -> None:
    image = noise_png((100, 100))
    absurd = [[0, 0, 1, 1], [[10, 1e12], [10, 50]], 1]
    with pytest.raises(SplineInputError) as caught:
        render_spline(image, parse_curves(absurd))
    assert caught.value.field == "c"
    assert "too far from the 100 x 100 image" in caught.value.message


def test_control_points_and_knots_are_drawn_only_when_asked() -> None:
    t, c, k = scipy_tck([(20, 20), (60, 150), (120, 30), (180, 160)], 3)
    image = noise_png((200, 200))
    curves = parse_curves([t.tolist(), [c[0].tolist(), c[1].tolist()], k])
    plain = len(drawn_pixels(image, render_spline(image, curves).data))
    options = DrawOptions(show_control_points=True, show_knots=True)
    decorated = render_spline(image, curves, options)
    assert len(drawn_pixels(image, decorated.data)) > plain * 1.3


def test_drawing_in_place_on_a_read_only_image_matches_drawing_on_a_writable_one() -> None:
    # An image over memory it does not own (`frombuffer`) is read-only: Pillow copies it
    # before writing, and the drawing must still land on the image returned.
    array = RNG.integers(0, 256, (90, 140), dtype=np.uint8)
    untouched = array.copy()
    read_only = Image.frombuffer("L", (140, 90), array, "raw", "L", 0, 1)
    assert read_only.readonly
    t, c, k = scipy_tck([(5, 80), (40, 10), (90, 70), (135, 15)], 3)
    curves = [validate_tck(t.tolist(), [c[0].tolist(), c[1].tolist()], k)]
    options = DrawOptions(color=(250, 250, 250, 255), width=3.0)  # grey ink: stays L
    drawn, _ = draw_curves(read_only, curves, options, in_place=True)
    expected, _ = draw_curves(Image.fromarray(untouched, "L"), curves, options)
    assert drawn.mode == "L"
    assert np.array_equal(np.asarray(drawn), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), untouched)
    assert np.array_equal(array, untouched)
