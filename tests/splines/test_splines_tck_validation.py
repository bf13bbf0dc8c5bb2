"""A tck is accepted in both layouts of `c`, and every mistake is named with its field and numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.interpolate import splprep  # type: ignore[import-untyped]  # no stubs installed

from splines.tck import SplineInputError, parse_curves, validate_tck

pytestmark = pytest.mark.one_pass

XS = [10.0, 60.0, 120.0, 150.0, 110.0, 40.0]
YS = [10.0, 80.0, 30.0, 100.0, 140.0, 120.0]


def splprep_tck(k: int = 3, periodic: bool = False) -> tuple[list[float], list[list[float]], int]:
    (t, c, k_out), _ = splprep([XS, YS], k=k, s=0, per=int(periodic))
    return list(map(float, t)), [list(map(float, c[0])), list(map(float, c[1]))], int(k_out)


def error_of(*args: Any, **kwargs: Any) -> SplineInputError:  # bad inputs on purpose
    with pytest.raises(SplineInputError) as caught:
        validate_tck(*args, **kwargs)
    return caught.value


def test_scipy_layout_is_read_as_x_row_and_y_row() -> None:
    t, c, k = splprep_tck()
    tck = validate_tck(t, c, k)
    assert tck.layout == "scipy"
    assert tck.points.shape == (len(c[0]), 2)
    np.testing.assert_array_equal(tck.points[:, 0], c[0])
    np.testing.assert_array_equal(tck.points[:, 1], c[1])


def test_dlabel_point_layout_gives_the_same_curve_as_scipy_layout() -> None:
    t, c, k = splprep_tck()
    points = [[x, y] for x, y in zip(c[0], c[1], strict=True)]
    from_points = validate_tck(t, points, k)
    from_rows = validate_tck(t, c, k)
    assert from_points.layout == "points"
    np.testing.assert_array_equal(from_points.points, from_rows.points)


def test_two_by_two_c_is_scipy_layout_in_a_list_and_points_in_a_dlabel_shape() -> None:
    t, c = [0.0, 0.0, 1.0, 1.0], [[0.0, 100.0], [50.0, 10.0]]
    listed = parse_curves([t, c, 1]).curves[0]
    assert listed.layout == "scipy"
    assert listed.points.tolist() == [[0.0, 50.0], [100.0, 10.0]]
    shape = parse_curves({"t": t, "c": c, "k": 1}).curves[0]
    assert shape.layout == "points"
    assert shape.points.tolist() == [[0.0, 100.0], [50.0, 10.0]]
    explicit = parse_curves({"t": t, "c": c, "k": 1, "layout": "scipy"}).curves[0]
    assert explicit.points.tolist() == listed.points.tolist()


def test_degree_outside_one_to_five_names_k() -> None:
    t, c, _ = splprep_tck()
    for k in (0, 6, -1):
        error = error_of(t, c, k)
        assert error.field == "k"
        assert "1 to 5" in error.message and str(k) in error.message
    assert error_of(t, c, "3").field == "k"
    assert error_of(t, c, 2.5).field == "k"


def test_knot_count_that_fits_neither_layout_says_len_t_must_be_n_plus_k_plus_1() -> None:
    t, c, k = splprep_tck()
    error = error_of(t[:-1], c, k)
    assert error.field == "t"
    n = len(c[0])
    assert "len(t) must be N + k + 1" in error.message
    assert f"N = {n}" in error.message
    assert f"needs {n + k + 1} knots" in error.message
    assert f"has {len(t) - 1}" in error.message


def test_decreasing_knots_name_the_first_drop() -> None:
    t, c, k = splprep_tck()
    t[5], t[6] = t[6], t[5]
    error = error_of(t, c, k)
    assert error.field == "t"
    assert "must not decrease" in error.message and "t[6]" in error.message


def test_c_in_neither_layout_is_refused_with_both_layouts_described() -> None:
    t, c, k = splprep_tck()
    error = error_of(t, [c[0], c[1], c[1]], k)  # three rows: x, y, z?
    assert error.field == "c"
    assert "[xs, ys]" in error.message and "[[x, y], ...]" in error.message
    ragged = error_of(t, [c[0], c[1][:-1]], k)
    assert ragged.field == "c" and "different lengths" in ragged.message
    assert error_of(t, "not a list", k).field == "c"


def test_nan_and_infinite_values_are_refused_with_their_position() -> None:
    t, c, k = splprep_tck()
    c_nan = [list(c[0]), list(c[1])]
    c_nan[1][2] = float("nan")
    error = error_of(t, c_nan, k)
    assert (error.field, error.message) == (
        "c",
        "c[1][2] is NaN; every value must be a finite number.",
    )
    t_inf = list(t)
    t_inf[-1] = float("inf")
    error = error_of(t_inf, c, k)
    assert error.field == "t" and "t[" in error.message and "infinite" in error.message


def test_too_few_coefficients_for_the_degree_names_c() -> None:
    error = error_of([0, 0, 0, 0, 1, 1, 1], [[0, 10, 20], [0, 5, 0]], 3)
    assert error.field == "c"
    assert "too few for degree k = 3" in error.message
    assert "at least k + 1 = 4" in error.message


def test_a_knot_repeated_more_than_k_plus_1_times_is_refused() -> None:
    error = error_of([0, 0, 0, 1, 1, 1, 1, 2, 2, 2], [[0, 1, 2, 3, 4, 5, 6], [0] * 7], 2)
    assert error.field == "t" and "at most k + 1 = 3" in error.message


def test_the_first_knot_repeated_too_often_is_named_with_its_count() -> None:
    # 1 appears 4 times and 2 appears 5 times for k = 2: the first is named, counted in full.
    t = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3]
    error = error_of(t, [list(range(12)), [0] * 12], 2)
    assert error.message.startswith("the knot 1 appears 4 times in t;")
    # As many as k + 1 (here at both ends and inside) is a valid knot vector.
    assert validate_tck([0, 0, 0, 1, 1, 1, 2, 2, 2], [list(range(6)), [0] * 6], 2).k == 2


def test_dlabel_export_draws_every_annotation_and_names_fields_by_path() -> None:
    t, c, k = splprep_tck()
    points = [[x, y] for x, y in zip(c[0], c[1], strict=True)]
    export: dict[str, Any] = {
        "frame_size": [640, 480],
        "annotations": [
            {"shape": {"t": t, "c": points, "k": k, "type": "spline"}},
            {"shape": {"t": t, "c": points, "k": k}, "label": "second"},
        ],
    }
    curve_set = parse_curves(export)
    assert len(curve_set.curves) == 2
    assert curve_set.frame_size == (640.0, 480.0)
    export["annotations"][1]["shape"]["k"] = 9
    with pytest.raises(SplineInputError) as caught:
        parse_curves(export)
    assert caught.value.field == "annotations[1].shape.k"


def test_something_that_is_no_tck_names_the_tck_field() -> None:
    with pytest.raises(SplineInputError) as caught:
        parse_curves("hello")
    assert caught.value.field == "tck"
    with pytest.raises(SplineInputError) as caught:
        parse_curves([1, 2])
    assert caught.value.field == "tck" and "[t, c, k]" in caught.value.message
