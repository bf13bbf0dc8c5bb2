"""The front page at `/`: what the service is and where its parts are (issue 14).

Site-wide glue like the root urls: it links every app's pages by their url names and
reads no database, so it answers even while the database is down.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

EXAMPLE_USER = "alice"


def front_page(request: HttpRequest) -> HttpResponse:
    base_url = request.build_absolute_uri("/").rstrip("/")
    open_mode = settings.ZYPHER_OPEN_MODE
    jobs = reverse("job-list")
    body = json.dumps({"user_id": EXAMPLE_USER, "input": 5})
    links = [
        ("API docs", reverse("swagger-ui"), "Swagger UI over the OpenAPI schema"),
        (
            "Browsable API",
            f"{jobs}?user_id={EXAMPLE_USER}" if open_mode else jobs,
            "the jobs API in the browser"
            + ("" if open_mode else " (log in to the admin first, or send a token)"),
        ),
        ("Splines", reverse("splines-page"), "draw a B-spline on an image"),
        ("Admin", reverse("admin:index"), "operators: the dashboard, users, weights, devices"),
        ("Health", reverse("health"), 'answers {"status": "ok"} while the server is up'),
    ]
    context = {
        "open_mode": open_mode,
        "links": links,
        "base_url": base_url,
        "curl": f"curl -s -X POST {base_url}{jobs} -H 'Content-Type: application/json' -d '{body}'",
    }
    return render(request, "zypher/front.html", context)
