"""Validating a B-spline curve given as `(t, c, k)`, in either layout of `c`, and fitting one.

Two layouts of the coefficients are in use:

* SciPy's: `splprep` returns `c = [xs, ys]`, two arrays of N coefficients (2 x N);
* dlabel's: its spline items carry `c = [[x, y], ...]`, a list of N control points (N x 2).

Both are told apart by the knot count, `len(t) = N + k + 1`. The one case the count cannot
decide is a 2 x 2 `c` (two control points, so a straight segment of degree 1): it is read
in SciPy's layout when it came as `[t, c, k]` or as separate `t`, `c`, `k` fields, and as
points when it came in a dlabel shape object `{"t", "c", "k"}`, unless that object says
`"layout": "scipy"` or `"layout": "points"`.

Every problem is a `SplineInputError` naming the field a user has to change and phrased
with the numbers they need to change it (SciPy's own messages for these cases are cryptic).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.interpolate import splprep  # type: ignore[import-untyped]  # no stubs installed

Layout = Literal["scipy", "points"]

MIN_DEGREE = 1
MAX_DEGREE = 5
# Far more than any annotation needs; bounds the work one request can ask for.
MAX_COEFFICIENTS = 100_000
MAX_FIT_POINTS = 100_000
# Points are pixels: a bound far beyond any image, and small enough that the squared
# distances splprep computes stay finite (from about 1e154 they overflow to inf, and the
# fitted tck, NaN, could not be sent as JSON).
MAX_FIT_COORDINATE = 1e9


class SplineInputError(ValueError):
    """A tck (or fit request) that cannot be drawn, with the field to fix and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Tck:
    """A validated parametric B-spline: knots, control points (N x 2, pixels) and degree."""

    t: np.ndarray
    points: np.ndarray
    k: int
    layout: Layout

    @property
    def base_interval(self) -> tuple[float, float]:
        """The parameter range the curve is defined on: `t[k]..t[N]`."""
        return float(self.t[self.k]), float(self.t[len(self.points)])

    def scaled(self, sx: float, sy: float) -> Tck:
        return Tck(self.t, self.points * np.array([sx, sy]), self.k, self.layout)

    def as_scipy(self) -> tuple[list[float], list[list[float]], int]:
        """The `(t, [xs, ys], k)` that `scipy.interpolate.splev` takes."""
        return self.t.tolist(), [self.points[:, 0].tolist(), self.points[:, 1].tolist()], self.k


@dataclass(frozen=True)
class CurveSet:
    """Everything one request asks to draw; `frame_size` is a dlabel export's `[w, h]`."""

    curves: list[Tck]
    frame_size: tuple[float, float] | None = None


def _is_number(value: Any) -> bool:
    # An integer past a float's range (JSON holds 10**400) is no number to draw with: as one,
    # numpy's and math's conversions would raise OverflowError (a 500) instead of a 400.
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or (isinstance(value, int) and abs(value) <= _FLOAT_MAX)


_FLOAT_MAX = sys.float_info.max


def _validate_degree(k: Any, field: str) -> int:
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if not isinstance(k, int) or isinstance(k, bool):
        raise SplineInputError(
            field,
            f"k must be an integer from {MIN_DEGREE} to {MAX_DEGREE} (the degree); got {k!r}.",
        )
    if not MIN_DEGREE <= k <= MAX_DEGREE:
        raise SplineInputError(
            field, f"k must be from {MIN_DEGREE} to {MAX_DEGREE} (the degree); got {k}."
        )
    return k


def _non_finite_message(name: str, index: tuple[int, ...], value: float) -> str:
    where = name + "".join(f"[{i}]" for i in index)
    kind = "NaN" if math.isnan(value) else "infinite"
    return f"{where} is {kind}; every value must be a finite number."


def _validate_knots(t: Any, k: int, field: str) -> np.ndarray:
    if not isinstance(t, Sequence) or isinstance(t, str) or not all(_is_number(v) for v in t):
        raise SplineInputError(field, "t must be a list of numbers (the knot vector).")
    if len(t) > MAX_COEFFICIENTS + 2 * (MAX_DEGREE + 1):
        raise SplineInputError(
            field, f"t has {len(t)} knots; at most {MAX_COEFFICIENTS} are drawn."
        )
    knots = np.asarray(t, dtype=float)
    bad = np.flatnonzero(~np.isfinite(knots))
    if bad.size:
        raise SplineInputError(field, _non_finite_message("t", (int(bad[0]),), knots[bad[0]]))
    drops = np.flatnonzero(np.diff(knots) < 0)
    if drops.size:
        i = int(drops[0]) + 1
        raise SplineInputError(
            field,
            f"t must not decrease, but t[{i}] = {knots[i]:g} is less than t[{i - 1}] = "
            f"{knots[i - 1]:g}.",
        )
    # t does not decrease, so a knot repeated over k + 1 times equals the one k + 1 after it
    # (a comparison of two views; `np.unique` would sort and count every value).
    too_many = np.flatnonzero(knots[k + 1 :] == knots[: -(k + 1)])
    if too_many.size:
        value = knots[too_many[0]]
        raise SplineInputError(
            field,
            f"the knot {value:g} appears {np.count_nonzero(knots == value)} times in t; a knot "
            f"may repeat at most k + 1 = {k + 1} times.",
        )
    return knots


def _coefficient_array(c: Any, field: str) -> np.ndarray:
    neither = (
        "c must be [xs, ys] (2 x N, as scipy's splprep gives) or [[x, y], ...] "
        "(N x 2, as dlabel exports)"
    )
    if not isinstance(c, Sequence) or isinstance(c, str) or not c:
        raise SplineInputError(field, neither + ".")
    rows = []
    for row in c:
        if not isinstance(row, Sequence) or isinstance(row, str):
            raise SplineInputError(field, neither + "; it is not a list of lists.")
        if not all(_is_number(v) for v in row):
            raise SplineInputError(field, neither + "; it holds something that is not a number.")
        rows.append(row)
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise SplineInputError(
            field, neither + f"; its rows have different lengths {sorted(widths)}."
        )
    array = np.asarray(rows, dtype=float)
    if 2 not in array.shape:
        raise SplineInputError(
            field,
            neither + f"; got {array.shape[0]} rows of {array.shape[1]} "
            "(only x and y curves in the image plane are drawn).",
        )
    return array


def validate_tck(
    t: Any,
    c: Any,
    k: Any,
    *,
    ambiguous_layout: Layout = "scipy",
    field_prefix: str = "",
) -> Tck:
    """Check a `(t, c, k)` from a user and return it with `c` as N x 2 points.

    `field_prefix` is prepended to the field names in errors (e.g. `annotations[2].shape.`).
    """
    k_field, t_field, c_field = (field_prefix + name for name in ("k", "t", "c"))
    degree = _validate_degree(k, k_field)
    knots = _validate_knots(t, degree, t_field)
    array = _coefficient_array(c, c_field)
    expected = len(knots) - degree - 1  # N, from len(t) = N + k + 1

    rows, cols = array.shape
    candidates = sorted({n for n, fits in ((cols, rows == 2), (rows, cols == 2)) if fits})
    if max(candidates) < degree + 1:
        raise SplineInputError(
            c_field,
            f"c has {max(candidates)} coefficients, too few for degree k = {degree}: "
            f"it needs at least k + 1 = {degree + 1}.",
        )
    fits_scipy = rows == 2 and cols == expected
    fits_points = cols == 2 and rows == expected
    if fits_scipy and fits_points:
        layout: Layout = ambiguous_layout
    elif fits_scipy:
        layout = "scipy"
    elif fits_points:
        layout = "points"
    else:
        read_as = " or ".join(f"N = {n}" for n in candidates)
        needed = " or ".join(str(n + degree + 1) for n in candidates)
        raise SplineInputError(
            t_field,
            f"len(t) must be N + k + 1: c holds {read_as} coefficients and k = {degree}, so t "
            f"needs {needed} knots, but it has {len(knots)}.",
        )
    points = array.T.copy() if layout == "scipy" else array
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise SplineInputError(c_field, _non_finite_message("c", index, array[index]))
    if len(points) > MAX_COEFFICIENTS:
        raise SplineInputError(
            c_field, f"c has {len(points)} coefficients; at most {MAX_COEFFICIENTS} are drawn."
        )
    if knots[degree] >= knots[len(points)]:
        raise SplineInputError(
            t_field,
            f"the curve's base interval t[k]..t[N] = t[{degree}]..t[{len(points)}] is empty "
            f"(both are {knots[degree]:g}); the knots must spread.",
        )
    return Tck(t=knots, points=points, k=degree, layout=layout)


def _shape_to_tck(shape: Any, prefix: str) -> Tck:
    if not isinstance(shape, dict):
        raise SplineInputError(prefix.rstrip("."), "must be an object with t, c and k.")
    missing = [key for key in ("t", "c", "k") if key not in shape]
    if missing:
        raise SplineInputError(
            prefix + missing[0], f"a dlabel shape needs t, c and k; {missing[0]} is missing."
        )
    layout = shape.get("layout", "points")
    if layout not in ("scipy", "points"):
        raise SplineInputError(prefix + "layout", 'layout must be "scipy" or "points".')
    return validate_tck(
        shape["t"], shape["c"], shape["k"], ambiguous_layout=layout, field_prefix=prefix
    )


def _frame_size(value: Any) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in value)
    ):
        raise SplineInputError("frame_size", "frame_size must be [width, height] in pixels.")
    return float(value[0]), float(value[1])


def parse_curves(value: Any, field: str = "tck") -> CurveSet:
    """Read every accepted way of giving curves.

    * `[t, c, k]` (what `splprep` returns as its first value);
    * a dlabel shape object `{"t": [...], "c": [[x, y], ...], "k": 3}` (extra keys ignored);
    * a dlabel annotation `{"shape": {...}}`;
    * a whole dlabel export `{"frame_size": [w, h], "annotations": [{"shape": {...}}, ...]}`.
    """
    if isinstance(value, list | tuple):
        if len(value) != 3:
            raise SplineInputError(
                field, f"{field} must be [t, c, k]; got a list of {len(value)} items."
            )
        return CurveSet([validate_tck(*value)])
    if isinstance(value, dict):
        if "annotations" in value:
            annotations = value["annotations"]
            if not isinstance(annotations, list):
                raise SplineInputError("annotations", "annotations must be a list.")
            frame = _frame_size(value["frame_size"]) if "frame_size" in value else None
            curves = []
            for i, annotation in enumerate(annotations):
                prefix = f"annotations[{i}]."
                if not isinstance(annotation, dict) or "shape" not in annotation:
                    raise SplineInputError(
                        prefix.rstrip("."), "each annotation must be an object with a shape."
                    )
                curves.append(_shape_to_tck(annotation["shape"], prefix + "shape."))
            return CurveSet(curves, frame)
        if "shape" in value:
            return CurveSet([_shape_to_tck(value["shape"], "shape.")])
        if {"t", "c", "k"} & value.keys():
            return CurveSet([_shape_to_tck(value, "")])
    raise SplineInputError(
        field,
        f"{field} must be [t, c, k], a dlabel shape {{t, c, k}} or a dlabel export "
        "{frame_size, annotations}.",
    )


@dataclass(frozen=True)
class FittedCurve:
    """What `fit_tck` answers: the tck in SciPy's layout and each point's parameter."""

    t: list[float]
    c: list[list[float]]
    k: int
    u: list[float]


def fit_tck(points: Any, k: int = 3, smoothing: float = 0.0, closed: bool = False) -> FittedCurve:
    """Fit a parametric B-spline through clicked points with `scipy.interpolate.splprep`."""
    degree = _validate_degree(k, "k")
    if not isinstance(points, Sequence) or isinstance(points, str):
        raise SplineInputError("points", "points must be a list of [x, y] pairs.")
    if len(points) > MAX_FIT_POINTS:
        raise SplineInputError("points", f"at most {MAX_FIT_POINTS} points can be fitted.")
    for i, point in enumerate(points):
        if (
            not isinstance(point, Sequence)
            or len(point) != 2
            or not all(_is_number(v) for v in point)
        ):
            raise SplineInputError("points", f"points[{i}] must be a pair [x, y] of numbers.")
    array = np.asarray(points, dtype=float).reshape(-1, 2)
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise SplineInputError("points", _non_finite_message("points", index, array[index]))
    far = np.argwhere(np.abs(array) > MAX_FIT_COORDINATE)
    if far.size:
        index = tuple(int(i) for i in far[0])
        raise SplineInputError(
            "points",
            f"points{''.join(f'[{i}]' for i in index)} is {array[index]:g}; coordinates are "
            f"pixels, from {-MAX_FIT_COORDINATE:g} to {MAX_FIT_COORDINATE:g}.",
        )
    if not _is_number(smoothing) or not math.isfinite(smoothing) or smoothing < 0:
        raise SplineInputError("smoothing", "smoothing must be a number, 0 or more.")
    if closed and len(array) > 1 and np.array_equal(array[0], array[-1]):
        array = array[:-1]  # a closed curve may repeat its first point at the end
    needed = degree + 1 + (1 if closed else 0)
    if len(array) < needed:
        raise SplineInputError(
            "points",
            f"{len(array)} points are too few to fit a {'closed ' if closed else ''}curve of "
            f"degree k = {degree}: give at least {needed}.",
        )
    same = np.flatnonzero(np.all(np.diff(array, axis=0) == 0, axis=1))
    if same.size:
        i = int(same[0])
        raise SplineInputError(
            "points",
            f"points[{i}] and points[{i + 1}] are the same point; remove the duplicate.",
        )
    fit_input = np.vstack([array, array[:1]]) if closed else array
    try:
        (t, c, fitted_k), u = splprep(fit_input.T, k=degree, s=smoothing, per=int(closed))
    except (ValueError, TypeError) as exc:  # FITPACK's own refusals
        raise SplineInputError("points", f"scipy could not fit these points: {exc}") from exc
    if not all(np.all(np.isfinite(part)) for part in (t, c[0], c[1], u)):
        # A fit FITPACK could not carry out in floating point (a huge smoothing, say): a
        # refusal naming the input, never NaN in the answer.
        raise SplineInputError("points", "scipy could not fit these points in finite numbers.")
    return FittedCurve(
        t=[float(v) for v in t],
        c=[[float(v) for v in c[0]], [float(v) for v in c[1]]],
        k=int(fitted_k),
        u=[float(v) for v in u],
    )
