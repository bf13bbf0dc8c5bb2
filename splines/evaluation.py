"""Turning a validated tck into polylines in pixel coordinates.

The curve is evaluated with SciPy's `BSpline` over the base interval `t[k]..t[N]` only
(periodic fits put knots outside it, where the curve is not defined). Each knot span gets
as many samples as its own size needs: on a span of parameter length `h` split into `n`
equal steps, the chord error is at most `(h / n)^2 * M / 8` pixels, where `M` bounds the
second derivative on the span. By the convex-hull property of B-splines, `M` is at most
the largest norm among the second-derivative coefficients active on that span, so

    n = ceil(h * sqrt(M / (8 * tolerance)))

keeps the polyline within `tolerance` pixels of the curve at any size, and a short or
straight span (degree 1 has `M = 0`) costs a single step.

An interior knot of multiplicity k + 1 lets the curve jump; the curve is split there into
independent pieces so that no line is drawn across the gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import BSpline  # type: ignore[import-untyped]  # no stubs installed

from .tck import SplineInputError, Tck

CHORD_TOLERANCE_PX = 0.1
# With coordinates bounded by the image size this is never reached by a sane curve; it
# stops a curve with thousands of tiny wiggling spans from asking for unbounded work.
MAX_SAMPLES = 2_000_000


@dataclass(frozen=True)
class Piece:
    """A part of a curve between two jumps: its own knots, control points and degree."""

    t: np.ndarray
    points: np.ndarray
    k: int


def split_at_jumps(tck: Tck) -> list[Piece]:
    """Split where an interior knot repeats k + 1 times (the curve may be discontinuous)."""
    t, points, k = tck.t, tck.points, tck.k
    # t does not decrease, so a run of k + 1 equal knots starts where t[i] == t[i + k]: no
    # such run strictly inside the base interval means no jump (the usual case), without
    # the sort and count per distinct value below.
    runs = t[: len(t) - k][t[k:] == t[: len(t) - k]]
    if not np.any((runs > t[k]) & (runs < t[len(points)])):
        return [Piece(t, points, k)]
    pieces: list[Piece] = []
    while True:
        n = len(points)
        low, high = t[k], t[n]
        interior = t[k + 1 : n]
        split_at = None
        for value in np.unique(interior[(interior > low) & (interior < high)]):
            if np.count_nonzero(t == value) == k + 1:
                split_at = int(np.flatnonzero(t == value)[0])
                break
        if split_at is None:
            pieces.append(Piece(t, points, k))
            return pieces
        # Basis functions before `split_at` end at the jump; those from it on start there.
        pieces.append(Piece(t[: split_at + k + 1], points[:split_at], k))
        t, points = t[split_at:], points[split_at:]


def _derivative(t: np.ndarray, coefficients: np.ndarray, k: int) -> np.ndarray:
    """Coefficients of the derivative (on knots `t[1:-1]`, degree k - 1).

    Coefficients of zero-width basis functions come out infinite or NaN; they are never
    active on a span of non-zero length, which is all they are used for here.
    """
    n = len(coefficients)
    with np.errstate(divide="ignore", invalid="ignore"):
        return k * (coefficients[1:] - coefficients[:-1]) / (t[k + 1 : k + n] - t[1:n])[:, None]


def span_sample_counts(
    piece: Piece, tolerance: float = CHORD_TOLERANCE_PX
) -> tuple[np.ndarray, np.ndarray]:
    """The non-empty knot spans of a piece's base interval and the steps each needs."""
    t, points, k = piece.t, piece.points, piece.k
    n = len(points)
    starts = np.arange(k, n)
    starts = starts[t[starts + 1] > t[starts]]
    lengths = t[starts + 1] - t[starts]
    if k < 2:
        return starts, np.ones(len(starts), dtype=np.int64)
    second = _derivative(t[1:-1], _derivative(t, points, k), k - 1)
    norms = np.linalg.norm(second, axis=1)
    # On span j the active second-derivative coefficients are j - k .. j - 2: the maximum
    # over each window of k - 1 norms, all spans at once, one shift of the window at a time
    # (k - 1 is at most 4; NaN norms never count).
    norms = np.fmax(norms, -np.inf)
    bounds = norms[starts - k]
    for shift in range(1, k - 1):
        bounds = np.maximum(bounds, norms[starts - k + shift])
    bounds = np.where(np.isfinite(bounds), bounds, 0.0)
    steps = np.ceil(lengths * np.sqrt(bounds / (8.0 * tolerance)))
    return starts, np.maximum(steps, 1).astype(np.int64)


def parameter_samples(piece: Piece, tolerance: float = CHORD_TOLERANCE_PX) -> np.ndarray:
    """Increasing parameters covering the piece's base interval, ends included."""
    starts, steps = span_sample_counts(piece, tolerance)
    if int(steps.sum()) + 1 > MAX_SAMPLES:
        raise SplineInputError(
            "c", f"this curve would need over {MAX_SAMPLES} samples to draw; simplify it."
        )
    t = piece.t
    # Per span: t[j] + (i / steps) * (t[j+1] - t[j]) for i in 0..steps-1, then the last end.
    span_of_sample = np.repeat(np.arange(len(starts)), steps)
    offsets = np.arange(len(span_of_sample)) - np.repeat(np.cumsum(steps) - steps, steps)
    low, high = t[starts][span_of_sample], t[starts + 1][span_of_sample]
    u = low + (high - low) * (offsets / steps[span_of_sample])
    return np.append(u, t[starts[-1] + 1])


def sample_curve(tck: Tck, tolerance: float = CHORD_TOLERANCE_PX) -> list[np.ndarray]:
    """The curve as polylines (M x 2 arrays, pixels), one per piece between jumps."""
    polylines = []
    total = 0
    for piece in split_at_jumps(tck):
        u = parameter_samples(piece, tolerance)
        total += len(u)
        if total > MAX_SAMPLES:
            raise SplineInputError(
                "c", f"this curve would need over {MAX_SAMPLES} samples to draw; simplify it."
            )
        # The arrays are validated already: `construct_fast` skips BSpline's own checks.
        polylines.append(BSpline.construct_fast(piece.t, piece.points, piece.k)(u))
    return polylines


def knot_points(tck: Tck) -> np.ndarray:
    """Where the curve is at its distinct knots inside the base interval (K x 2)."""
    low, high = tck.base_interval
    knots = np.unique(tck.t[(tck.t >= low) & (tck.t <= high)])
    points = []
    for piece in split_at_jumps(tck):
        piece_low, piece_high = piece.t[piece.k], piece.t[len(piece.points)]
        inside = knots[(knots >= piece_low) & (knots <= piece_high)]
        points.append(BSpline(piece.t, piece.points, piece.k)(inside))
    return np.vstack(points)
