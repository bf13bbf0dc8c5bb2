"""The callback allow-list: nothing by default in production, loopback with explicit ports
in development, and link-local or cloud metadata addresses refused whatever the list says,
also when a name resolves to one of them (at creation and again at delivery)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Program
from jobs.programs import CallbackNotAllowed, check_callback_url, post_callback
from tests.api.test_production_settings import SAFE, run_django
from tests.support.device_fixtures import CallbackReceiver

# Spellings of link-local and metadata endpoints; the last three are names that the
# resolver turns into 169.254.169.254 (inet_aton accepts decimal and hex forms).
REFUSED_ALWAYS = [
    "http://169.254.169.254/latest/meta-data",
    "http://169.254.10.1:8000/hook",
    "http://[fe80::1]:8000/hook",
    "http://[fe80::1%25eth0]:8000/hook",
    "http://[fd00:ec2::254]/latest/meta-data",
    "http://[::ffff:169.254.169.254]/latest",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/",
    "http://2852039166/latest/meta-data",
    "http://0xa9fea9fe/latest/meta-data",
    "http://0xa9.0xfe.0xa9.0xfe/latest/meta-data",
]


def default_allowed_hosts(env: dict[str, str]) -> str:
    code = "from django.conf import settings; print(settings.ZYPHER_CALLBACK_ALLOWED_HOSTS)"
    result = run_django(
        {**env, "DJANGO_SETTINGS_MODULE": "zypher.settings"},
        "-c",
        f"import django; django.setup(); {code}",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_production_allows_no_callback_host_by_default():
    assert default_allowed_hosts(SAFE) == "[]"


def test_development_allows_loopback_with_explicit_ports_by_default():
    assert default_allowed_hosts({}) == "['127.0.0.1:*', 'localhost:*', '[::1]:*']"


@pytest.fixture
def development_default(settings: Any) -> None:
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/hook", "http://localhost:8001/", "https://[::1]:8443/x"]
)
def test_the_development_default_takes_loopback_with_a_port(development_default, url):
    check_callback_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/hook", "https://localhost/", "http://example.com:8000/"]
)
def test_the_development_default_refuses_implicit_ports_and_other_hosts(development_default, url):
    with pytest.raises(CallbackNotAllowed, match="not allowed"):
        check_callback_url(url)


def test_an_entry_with_a_port_allows_that_port_only(settings):
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1:9000"]
    check_callback_url("http://127.0.0.1:9000/hook")
    with pytest.raises(CallbackNotAllowed):
        check_callback_url("http://127.0.0.1:9001/hook")


def test_an_empty_list_refuses_every_callback_and_says_why(settings):
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = []
    with pytest.raises(CallbackNotAllowed, match="empty, so no callbacks"):
        check_callback_url("http://127.0.0.1:9000/hook")


@pytest.mark.parametrize("url", REFUSED_ALWAYS)
def test_link_local_and_metadata_addresses_are_refused_even_when_any_host_is_allowed(settings, url):
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["*"]
    with pytest.raises(CallbackNotAllowed, match="link-local or cloud metadata"):
        check_callback_url(url)


@pytest.mark.parametrize("url", REFUSED_ALWAYS[-3:])
def test_a_name_resolving_to_metadata_is_refused_when_allow_listed_by_name(settings, url):
    from urllib.parse import urlparse

    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = [urlparse(url).hostname]
    with pytest.raises(CallbackNotAllowed, match="resolves to 169.254.169.254"):
        check_callback_url(url)


def test_delivery_checks_again_and_does_not_post_to_metadata(settings):
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["*"]
    error = post_callback("http://2852039166:9/latest", {"program": "x"}, timeout=2)
    assert "link-local or cloud metadata" in error


def test_delivery_posts_to_an_allowed_receiver(development_default):
    receiver = CallbackReceiver()
    try:
        assert post_callback(receiver.url, {"program": "x"}, timeout=5) == ""
        assert receiver.bodies == [{"program": "x"}]
    finally:
        receiver.close()


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["http://0xa9fea9fe/latest", "http://[fe80::1]:80/"])
def test_the_api_refuses_a_metadata_callback_with_a_json_error(settings, url):
    """Well formed, but never called: 403 naming why (a malformed URL is the 400)."""
    settings.ZYPHER_OPEN_MODE = True
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["*"]
    program = {
        "user_id": "alice",
        "device_type": "qpu",
        "jobs": [{"instructions": ["h 0"], "shots": 1, "size": 1}],
        "callback_url": url,
    }
    response = APIClient().post("/api/programs/", program, format="json")
    assert response.status_code == 403
    assert "metadata" in str(response.json()["callback_url"])
    assert not Program.objects.exists()


# IPv6 addresses that carry 169.254.169.254 inside them: the IPv4-compatible form, the
# NAT64 well-known prefix (where a NAT64 gateway forwards to the IPv4 address), 6to4.
EMBEDDED_METADATA = [
    "http://[::169.254.169.254]/latest",
    "http://[64:ff9b::a9fe:a9fe]/latest",
    "http://[2002:a9fe:a9fe::1]/latest",
]


@pytest.mark.parametrize("url", EMBEDDED_METADATA)
def test_metadata_embedded_in_an_ipv6_address_is_refused(settings, url):
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["*"]
    with pytest.raises(CallbackNotAllowed, match="link-local or cloud metadata"):
        check_callback_url(url, resolve=False)
