"""Production settings: ZYPHER_ENV=production refuses to start with an unsafe
configuration, and `manage.py check --deploy` passes with a safe one. The default
(development) configuration, which `make run` and the tests use, is unaffected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zypher.settings import DEVELOPMENT_SECRET_KEY, production_problems

pytestmark = pytest.mark.one_pass

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k8Jq2vX9pL4mN7rT1wY6zB3cF5hD0gS8aE2uI9oP4lK7jH1nM6bV3cX5zQ8wR2tY"
SAFE = {
    "ZYPHER_ENV": "production",
    "DJANGO_SECRET_KEY": GOOD_KEY,
    "DJANGO_ALLOWED_HOSTS": "zypher.example.org",
}


def run_django(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ZYPHER_"))}
    clean["ZYPHER_SQLITE_PATH"] = str(ROOT / "var" / "production-check.sqlite3")
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_production_settings():
    result = run_django(SAFE, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_sees_the_security_settings_through_our_middleware_subclasses():
    # Django finds its middleware by path; ours are subclasses (jobs/checks.py runs the
    # checks that depend on them again): without that, HSTS off would pass unseen.
    result = run_django(
        {**SAFE, "ZYPHER_HSTS_SECONDS": "0"},
        "manage.py",
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert result.returncode != 0
    assert "security.W004" in result.stderr


def test_the_web_server_refuses_to_start_with_unsafe_production_settings():
    unsafe = {**SAFE, "DJANGO_DEBUG": "1", "DJANGO_ALLOWED_HOSTS": "*"}
    result = run_django(unsafe, "-c", "import zypher.asgi")
    assert result.returncode != 0
    assert "ZYPHER_ENV=production refuses to start" in result.stderr
    assert "DJANGO_DEBUG must be off" in result.stderr
    assert "DJANGO_ALLOWED_HOSTS must name" in result.stderr


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_SECRET_KEY": DEVELOPMENT_SECRET_KEY}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_SECRET_KEY": "django-insecure-" + GOOD_KEY}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_SECRET_KEY": "short-secret"}, "at least 50 characters"),
        ({"DJANGO_SECRET_KEY": "a" * 64}, "at least 50 characters"),
        ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG must be off"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS must name"),
        ({"DJANGO_ALLOWED_HOSTS": "*"}, "DJANGO_ALLOWED_HOSTS must name"),
        ({"ZYPHER_OPEN_MODE": "1"}, "ZYPHER_OPEN_MODE must be off"),
    ],
)
def test_each_unsafe_setting_is_named(change: dict[str, str], complaint: str):
    problems = production_problems({**SAFE, **change})
    assert len(problems) == 1 and complaint in problems[0]


def test_safe_production_settings_have_no_problems():
    assert production_problems(SAFE) == []


def test_an_unknown_environment_name_is_refused():
    result = run_django({"ZYPHER_ENV": "prod"}, "manage.py", "check")
    assert (
        result.returncode != 0 and "ZYPHER_ENV must be development or production" in result.stderr
    )


def test_the_development_default_still_starts():
    result = run_django({}, "manage.py", "check")
    assert result.returncode == 0, result.stderr
