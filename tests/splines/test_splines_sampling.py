"""Curves are sampled over the base interval only, densely enough, and split at jumps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import BSpline, splev, splprep  # type: ignore[import-untyped]  # no stubs installed

from splines.evaluation import CHORD_TOLERANCE_PX, sample_curve, split_at_jumps
from splines.tck import validate_tck

pytestmark = pytest.mark.one_pass


def distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    start, end = polyline[:-1], polyline[1:]
    direction = end - start
    offset = points[:, None, :] - start[None]
    length2 = np.maximum((direction**2).sum(-1), 1e-12)
    along = np.clip((offset * direction).sum(-1) / length2, 0.0, 1.0)
    return np.linalg.norm(offset - along[..., None] * direction, axis=-1).min(axis=1)


def fitted(scale: float, k: int = 3, periodic: bool = False):
    xs = np.array([10.0, 60.0, 120.0, 150.0, 110.0, 40.0]) * scale
    ys = np.array([10.0, 80.0, 30.0, 100.0, 140.0, 120.0]) * scale
    (t, c, k_out), _ = splprep([xs, ys], k=k, s=0, per=int(periodic))
    return (t, c, k_out), validate_tck(t.tolist(), [c[0].tolist(), c[1].tolist()], k_out)


def test_polyline_stays_within_the_chord_tolerance_of_the_curve_at_every_size() -> None:
    for scale in (0.2, 1.0, 20.0):
        for k in (2, 3, 5):
            scipy_tck, tck = fitted(scale, k)
            (polyline,) = sample_curve(tck)
            truth = np.array(splev(np.linspace(0, 1, 4000), scipy_tck)).T
            assert distance_to_polyline(truth, polyline).max() <= CHORD_TOLERANCE_PX + 1e-9


def test_sample_count_follows_the_curve_size_not_a_fixed_number() -> None:
    small = len(sample_curve(fitted(0.2)[1])[0])
    large = len(sample_curve(fitted(20.0)[1])[0])
    assert small < 100
    assert large > 5 * small


def test_degree_one_curve_is_sampled_at_its_knots_only() -> None:
    tck = validate_tck([0, 0, 1, 2, 3, 3], [[0, 0], [50, 0], [50, 50], [0, 50]], 1)
    (polyline,) = sample_curve(tck)
    assert polyline.tolist() == [[0, 0], [50, 0], [50, 50], [0, 50]]


def test_periodic_fit_is_evaluated_over_its_base_interval_only() -> None:
    scipy_tck, tck = fitted(1.0, periodic=True)
    t, k = scipy_tck[0], scipy_tck[2]
    assert t[0] < t[k]  # periodic knots reach outside the base interval
    (polyline,) = sample_curve(tck)
    np.testing.assert_allclose(polyline[0], polyline[-1], atol=1e-6)  # a closed loop
    np.testing.assert_allclose(polyline[0], [10.0, 10.0], atol=1e-6)
    outside = BSpline(t, np.array(scipy_tck[1]).T, k)(t[0] + 0.5 * (t[k] - t[0]))
    assert distance_to_polyline(outside[None], polyline)[0] > 1.0


def test_knot_of_multiplicity_k_plus_1_splits_the_curve_where_it_jumps() -> None:
    t = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    points = [[0, 0], [10, 20], [20, 0], [100, 100], [110, 120], [120, 100]]
    tck = validate_tck(t, points, 2)
    assert len(split_at_jumps(tck)) == 2
    first, second = sample_curve(tck)
    np.testing.assert_allclose(first[-1], [20, 0])
    np.testing.assert_allclose(second[0], [100, 100])
    np.testing.assert_allclose(second[-1], [120, 100])
