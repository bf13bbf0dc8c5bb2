"""POST /api/splines/fit/ answers the tck that splprep fits through clicked points."""

from __future__ import annotations

import numpy as np
import pytest
from rest_framework.test import APIClient
from scipy.interpolate import splev  # type: ignore[import-untyped]  # no stubs installed

from splines.tck import fit_tck, validate_tck

pytestmark = [pytest.mark.urls("splines.urls"), pytest.mark.one_pass]

URL = "/api/splines/fit/"
POINTS = [[10, 80], [60, 20], [120, 90], [170, 30], [220, 70]]


def test_fitted_curve_passes_through_every_point() -> None:
    response = APIClient().post(URL, {"points": POINTS, "k": 3, "smoothing": 0}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"t", "c", "k", "u"}
    assert body["k"] == 3 and len(body["c"]) == 2
    curve = np.array(splev(body["u"], (body["t"], body["c"], body["k"]))).T
    np.testing.assert_allclose(curve, POINTS, atol=1e-6)


def test_fitted_tck_is_accepted_by_the_validator_as_it_is() -> None:
    fitted = fit_tck(POINTS, k=2)
    tck = validate_tck(fitted.t, fitted.c, fitted.k)
    assert tck.layout == "scipy" and tck.k == 2


def test_closed_fit_returns_to_its_first_point() -> None:
    body = APIClient().post(URL, {"points": POINTS, "closed": True}, format="json").json()
    start, end = np.array(splev([body["u"][0], 1.0], (body["t"], body["c"], body["k"]))).T
    np.testing.assert_allclose(start, end, atol=1e-6)


def test_too_few_points_for_the_degree_names_points() -> None:
    response = APIClient().post(URL, {"points": POINTS[:3], "k": 3}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "points": ["3 points are too few to fit a curve of degree k = 3: give at least 4."]
    }


def test_repeated_click_names_the_duplicate() -> None:
    points = [*POINTS[:2], POINTS[1], *POINTS[2:]]
    response = APIClient().post(URL, {"points": points}, format="json")
    assert response.status_code == 400
    assert response.json()["points"] == [
        "points[1] and points[2] are the same point; remove the duplicate."
    ]


def test_bad_degree_and_smoothing_name_their_fields() -> None:
    assert "k" in APIClient().post(URL, {"points": POINTS, "k": 7}, format="json").json()
    response = APIClient().post(URL, {"points": POINTS, "smoothing": -1}, format="json")
    assert response.status_code == 400 and "smoothing" in response.json()
    response = APIClient().post(URL, {"points": [[1, "a"]]}, format="json")
    assert response.json() == {"points": ["points[0] must be a pair [x, y] of numbers."]}


@pytest.mark.parametrize("huge", [1e308, -1e200, 1e160, 2e9])
def test_a_coordinate_too_large_to_fit_is_a_400_naming_it(huge: float) -> None:
    # Found by the schemathesis fuzz: 1e160 and up overflowed inside splprep, and the NaN
    # tck could not be written as JSON (a 500).
    points = [[0, 0], [huge, 1], [2, 3], [3, 5]]
    response = APIClient().post(URL, {"points": points}, format="json")
    assert response.status_code == 400, response.content
    assert "points[1][0]" in response.json()["points"][0]
