"""The front page at `/`: a real browser loads it from the package's gateway (open mode),
every link answers, and the one-line curl it shows really submits a job."""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from django.test import Client as DjangoClient

from tests.support.processes import Gateway

pytest_plugins = ["tests.support.browser"]


@pytest.mark.e2e
def test_the_front_page_links_every_part_and_each_link_answers(
    server: Gateway, browser: Any
) -> None:
    page = browser.new_page()
    try:
        answer = page.goto(server.url + "/")
        assert answer is not None and answer.status == 200
        assert page.title() == "Zypher"
        assert "fair-share gateway" in page.inner_text("p.lead")
        links = {
            page.inner_text(f"ul.links li:nth-child({n}) a"): page.get_attribute(
                f"ul.links li:nth-child({n}) a", "href"
            )
            for n in range(1, page.locator("ul.links a").count() + 1)
        }
        external = page.evaluate(
            "[...document.querySelectorAll('[src], link[href]')].map(e => e.src || e.href)"
        )
    finally:
        page.close()

    assert set(links) == {"API docs", "Browsable API", "Splines", "Admin", "Health"}
    assert external == []  # no scripts, stylesheets or images from anywhere
    for name, href in links.items():
        assert href is not None
        response = requests.get(urljoin(server.url, href), allow_redirects=False, timeout=30)
        assert response.status_code in (200, 302), (name, href, response.status_code)
    assert requests.get(urljoin(server.url, links["Health"]), timeout=30).json() == {"status": "ok"}


@pytest.mark.e2e
def test_the_curl_line_shown_in_open_mode_submits_a_job(server: Gateway, browser: Any) -> None:
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        curl = page.inner_text("#curl")
    finally:
        page.close()

    words = shlex.split(curl)
    assert words[:4] == ["curl", "-s", "-X", "POST"]
    url, body = words[4], words[words.index("-d") + 1]
    assert url == f"{server.url}/api/jobs/"
    submitted = requests.post(
        url, data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["status"] == "queued"


def test_without_open_mode_the_page_shows_no_curl_but_how_to_get_a_token(
    client: DjangoClient, settings: Any
) -> None:
    settings.ZYPHER_OPEN_MODE = False

    page = client.get("/")

    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="curl"' not in text
    assert "POST /api/token/" in text
    assert 'href="/api/jobs/"' in text  # the browsable API, for a logged-in session
