"""The exact coverage of an ideal stroke, to measure a rasteriser against.

An ideal stroke of width `w` along a curve (round ends and joins) is the set of points
within `w / 2` of the curve. A pixel's exact coverage is the fraction of its square inside
that set; here it is measured by supersampling each pixel on an `s x s` grid against the
curve sampled every 0.02 pixels, which puts it within about 1 / s^2 plus 0.01 pixels of
distance of the true value. Used by the tests and the benchmark, never by a request.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import BSpline  # type: ignore[import-untyped]  # no stubs installed
from scipy.spatial import cKDTree  # type: ignore[import-untyped]  # no stubs installed

from .evaluation import split_at_jumps
from .tck import Tck


def dense_curve(tck: Tck, spacing: float = 0.02) -> np.ndarray:
    """Points on the true curve no more than about `spacing` pixels apart."""
    pieces = []
    for piece in split_at_jumps(tck):
        spline = BSpline(piece.t, piece.points, piece.k)
        low, high = piece.t[piece.k], piece.t[len(piece.points)]
        rough = spline(np.linspace(low, high, 2001))
        length = float(np.linalg.norm(np.diff(rough, axis=0), axis=1).sum())
        pieces.append(spline(np.linspace(low, high, max(2, int(length / spacing) * 2))))
    return np.vstack(pieces)


def exact_coverage(
    curve_points: np.ndarray, width: float, size: tuple[int, int], supersample: int = 16
) -> np.ndarray:
    """Coverage in 0..1 of every pixel (rows x columns) by the ideal stroke."""
    columns, rows = size
    coverage = np.zeros((rows, columns))
    radius = width / 2.0
    low = np.maximum(np.floor(curve_points.min(axis=0) - radius - 1), 0).astype(int)
    high = np.minimum(np.ceil(curve_points.max(axis=0) + radius + 2), [columns, rows]).astype(int)
    if np.any(high <= low):
        return coverage
    tree = cKDTree(curve_points)
    # Only pixels whose centre is within reach of the stroke's edge need supersampling.
    centre_x, centre_y = np.meshgrid(np.arange(low[0], high[0]), np.arange(low[1], high[1]))
    centres = np.column_stack([centre_x.ravel(), centre_y.ravel()]).astype(float)
    near, _ = tree.query(centres, distance_upper_bound=radius + 0.75)
    centres = centres[np.isfinite(near)]
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grid_x, grid_y = np.meshgrid(offsets, offsets)
    subsamples = centres[:, None, :] + np.column_stack([grid_x.ravel(), grid_y.ravel()])[None]
    distance, _ = tree.query(subsamples.reshape(-1, 2), distance_upper_bound=radius + 1e-9)
    inside = np.isfinite(distance).reshape(len(centres), -1).mean(axis=1)
    columns_index, rows_index = centres[:, 0].astype(int), centres[:, 1].astype(int)
    coverage[rows_index, columns_index] = inside
    return coverage


def coverage_error(measured: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Ink misplaced relative to the ink that should be there, and the worst pixel."""
    difference = np.abs(measured - exact)
    return {
        "relative": float(difference.sum() / max(exact.sum(), 1e-12)),
        "max_pixel": float(difference.max()),
    }
