"""Zypher settings.

Everything an operator sets comes from the environment; each name and default is
documented in the README's configuration table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float_pair(name: str, default: tuple[float, float]) -> tuple[float, float]:
    value = os.environ.get(name)
    if not value:
        return default
    low, _, high = value.partition(",")
    low_f = float(low)
    return (low_f, float(high) if high else low_f)


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "zypher-insecure-development-key-change-me"
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = os.environ.get(
    "DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver"
).split(",")

INSTALLED_APPS = [
    # Django's admin with the operators' dashboard among its pages: its site
    # (jobs.monitoring.admin_site) replaces the default one, so every admin page is served by it.
    "jobs.monitoring.admin_site.ZypherAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "jobs",
    "devices",
    "splines",
]

# Django's own middleware, as subclasses that run on the event loop for `async def` views
# and go to a thread only to touch the database (jobs.api.middleware; issue 16).
MIDDLEWARE = [
    "jobs.api.middleware.ApiErrorMiddleware",
    "jobs.api.middleware.SecurityMiddleware",
    "jobs.api.middleware.WhiteNoiseMiddleware",
    "jobs.api.middleware.SessionMiddleware",
    "jobs.api.middleware.CommonMiddleware",
    "jobs.api.middleware.CsrfViewMiddleware",
    "jobs.api.middleware.AuthenticationMiddleware",
    "jobs.api.middleware.MessageMiddleware",
    "jobs.api.middleware.XFrameOptionsMiddleware",
]

# Django looks for its middleware by path; ours extend them (jobs.api.middleware), so
# jobs/checks.py runs those checks again through the subclasses (as zypher.security.W00x).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "zypher.urls"
WSGI_APPLICATION = "zypher.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite in WAL mode by default (zero set-up), PostgreSQL via DATABASE_URL.
SQLITE_PATH = Path(os.environ.get("ZYPHER_SQLITE_PATH", BASE_DIR / "var" / "zypher.sqlite3"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{SQLITE_PATH}",
        conn_max_age=600,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so a claim never fails halfway
        # through upgrading a read transaction (SQLITE_BUSY on upgrade).
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # One test database per test run, so that concurrent runs in one checkout do not collide.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / "var" / f"test-zypher-{os.getpid()}.sqlite3")
    }
elif env_bool("ZYPHER_DB_POOL", False):
    # PostgreSQL through Django's native pool (psycopg-pool), one pool per process; on in
    # the web server (gunicorn.conf.py sets ZYPHER_DB_POOL=1). Under ASGI each request's
    # synchronous part runs in a thread of its own, so per-thread persistent connections
    # (CONN_MAX_AGE) were opened anew by every request; a pooled connection is taken when
    # a request first queries and given back when it ends. Processes with long-lived
    # threads (run_dispatcher, manage.py) keep persistent connections: a pool would only
    # add a check per call there. Sizes are per web worker: WEB_WORKERS x
    # ZYPHER_DB_POOL_MAX_SIZE, plus one connection per dispatcher thread, per LISTEN and
    # per loop settle connection (a dispatcher: up to seven, README), must stay below PostgreSQL's max_connections (100 by default, 3 reserved): the
    # defaults (2 workers x 10) leave room for several dispatchers and operators. A
    # request that finds the pool exhausted waits up to ZYPHER_DB_POOL_TIMEOUT seconds,
    # then fails as a database outage (503 with Retry-After). While PostgreSQL is down the
    # pool has nothing to hand out either: a short wait keeps the answer a prompt 503 that
    # clients retry, not a request held for the whole outage (the fault drill checks it).
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool refuses persistent connections
    # Health check: Django's (an empty query, one round trip, on every checkout), which
    # the web server's entry point (zypher/asgi.py) narrows to connections idle over 5 s
    # or whose socket shows the server ended them (jobs.api.connection_check), and
    # notes there when each connection was given back. No `reset` callback: with one,
    # psycopg-pool hands every return to its worker thread.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": int(os.environ.get("ZYPHER_DB_POOL_MIN_SIZE", "2")),
        "max_size": int(os.environ.get("ZYPHER_DB_POOL_MAX_SIZE", "10")),
        "timeout": float(os.environ.get("ZYPHER_DB_POOL_TIMEOUT", "3")),
        # Recycled after an hour idle-or-not, so server-side memory growth stays bounded.
        "max_lifetime": 3600.0,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "jobs.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

LOGIN_URL = "/admin/login/"

# Request size limits: a body over ZYPHER_MAX_BODY_BYTES is refused with 413 before
# it is read (jobs.api.middleware), so a bulk submit of many jobs still fits.
ZYPHER_MAX_BODY_BYTES = int(os.environ.get("ZYPHER_MAX_BODY_BYTES", str(8 * 1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = ZYPHER_MAX_BODY_BYTES
ZYPHER_MAX_BULK_JOBS = int(os.environ.get("ZYPHER_MAX_BULK_JOBS", "10000"))
# Admission control: a submit that would leave its user with more queued jobs than this is
# refused whole with a 429 (jobs.queue.check_admission).
ZYPHER_MAX_QUEUED_PER_USER = int(os.environ.get("ZYPHER_MAX_QUEUED_PER_USER", "100000"))
# A job's result over this many bytes of JSON fails the job (jobs.results).
ZYPHER_MAX_RESULT_BYTES = int(os.environ.get("ZYPHER_MAX_RESULT_BYTES", str(1024 * 1024)))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "jobs.api.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    # Submit rate limits (jobs.api.throttles), e.g. "100/min"; empty: off (the default).
    "DEFAULT_THROTTLE_RATES": {
        "submit_user": os.environ.get("ZYPHER_SUBMIT_RATE_USER") or None,
        "submit_address": os.environ.get("ZYPHER_SUBMIT_RATE_ADDRESS") or None,
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Zypher API",
    "DESCRIPTION": "Fair-share gateway for scarce compute.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation's error answers (400, 401, 403, 404, 413, 415, 503), issue 8.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "jobs.api.errors.document_error_responses",
        "jobs.api.events.document_events_endpoint",  # the SSE stream, a plain Django view
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "zypher": {"handlers": ["console"], "level": os.environ.get("ZYPHER_LOG_LEVEL", "INFO")},
    },
}

# --- Zypher ---------------------------------------------------------------
# Open mode: a request may name its user_id without a token (the original contract).
ZYPHER_OPEN_MODE = env_bool("ZYPHER_OPEN_MODE", False)
# The common single submit answered in front of Django (jobs.api.direct_submit), on
# PostgreSQL; off: every submit goes through Django and DRF.
ZYPHER_DIRECT_SUBMIT = env_bool("ZYPHER_DIRECT_SUBMIT", True)
# Local devices that run_dispatcher starts by default.
ZYPHER_LOCAL_DEVICES = int(os.environ.get("ZYPHER_LOCAL_DEVICES", "1"))
ZYPHER_LOCAL_DEVICE_TYPE = os.environ.get("ZYPHER_LOCAL_DEVICE_TYPE", "cpu")
# The built-in handlers' durations.
ZYPHER_LIMITED_F_SECONDS = float(os.environ.get("ZYPHER_LIMITED_F_SECONDS", "2"))
ZYPHER_PREDICT_DELAY = env_float_pair("ZYPHER_PREDICT_DELAY", (10.0, 17.0))
# How long a synchronous POST /predict waits for its job before answering 202 with the
# prediction_id to poll (the job goes on either way).
ZYPHER_PREDICT_WAIT_SECONDS = float(os.environ.get("ZYPHER_PREDICT_WAIT_SECONDS", "300"))
# Extra handlers: a JSON object {"kind": "module:function"}, merged over the built-ins.
ZYPHER_HANDLERS: dict[str, str] = json.loads(os.environ.get("ZYPHER_HANDLERS", "{}") or "{}")
# Leases: a running job's lease is renewed every LEASE/3 s by its dispatcher; a lease
# that expires (dispatcher killed or hung) is requeued by any dispatcher's reaper.
ZYPHER_LEASE_SECONDS = float(os.environ.get("ZYPHER_LEASE_SECONDS", "10"))
ZYPHER_MAX_ATTEMPTS = int(os.environ.get("ZYPHER_MAX_ATTEMPTS", "3"))
# How often each dispatcher checks the queue's invariants and repairs drift (jobs.invariants).
ZYPHER_QUEUE_CHECK_SECONDS = float(os.environ.get("ZYPHER_QUEUE_CHECK_SECONDS", "60"))
# Cost charged at dispatch for a pool that has not finished a job yet (seconds).
ZYPHER_DEFAULT_COST_SECONDS = float(os.environ.get("ZYPHER_DEFAULT_COST_SECONDS", "1"))
# How long SIGTERM waits for running jobs before requeueing them.
ZYPHER_SHUTDOWN_GRACE_SECONDS = float(os.environ.get("ZYPHER_SHUTDOWN_GRACE_SECONDS", "30"))
# Tests only: "task=count,...": that many crashes injected at the start of a dispatcher's
# supervised background task (devices.dispatcher.supervisor), to prove the restarts.
ZYPHER_TEST_TASK_FAULTS = os.environ.get("ZYPHER_TEST_TASK_FAULTS", "")
# A dispatcher's database call pending this long is logged, and again every such interval
# it goes on: a claim waiting for a lock that an open transaction holds (an operator's
# session, say) would otherwise stall its pool without a word.
ZYPHER_SLOW_CALL_SECONDS = float(os.environ.get("ZYPHER_SLOW_CALL_SECONDS", "10"))
# Fallback poll interval of an idle dispatcher (LISTEN/NOTIFY wakes it sooner on PostgreSQL).
# SQLite has no NOTIFY, so it polls more often.
ZYPHER_IDLE_POLL_SECONDS = float(
    os.environ.get(
        "ZYPHER_IDLE_POLL_SECONDS",
        "1" if DATABASES["default"]["ENGINE"].endswith("postgresql") else "0.25",
    )
)

MEDIA_ROOT = Path(os.environ.get("ZYPHER_MEDIA_ROOT", BASE_DIR / "var" / "media"))
MEDIA_URL = "/media/"

# --- devices ---
# Registration token for device agents (POST /api/devices/ with X-Zypher-Device-Token);
# empty: only staff register devices (and, in open mode, the compat routes).
ZYPHER_DEVICE_TOKEN = os.environ.get("ZYPHER_DEVICE_TOKEN", "")
# Health checks of remote devices: every PING seconds; MISSED unanswered in a row mark a
# device offline and requeue its job; each waits at most TIMEOUT seconds.
ZYPHER_DEVICE_PING_SECONDS = float(os.environ.get("ZYPHER_DEVICE_PING_SECONDS", "2"))
ZYPHER_DEVICE_MISSED_PINGS = int(os.environ.get("ZYPHER_DEVICE_MISSED_PINGS", "3"))
ZYPHER_DEVICE_TIMEOUT_SECONDS = float(os.environ.get("ZYPHER_DEVICE_TIMEOUT_SECONDS", "3"))
# A job whose result its agent holds but has not delivered keeps its lease this long after
# it ended, then is requeued (execution is at least once).
ZYPHER_DEVICE_UNREPORTED_SECONDS = float(os.environ.get("ZYPHER_DEVICE_UNREPORTED_SECONDS", "120"))
# How long an agent retries a state report (run_device); a job's report has no such bound.
ZYPHER_DEVICE_REPORT_RETRY_SECONDS = float(
    os.environ.get("ZYPHER_DEVICE_REPORT_RETRY_SECONDS", "60")
)
# Signed messages older or newer than this (seconds) are refused as stale.
ZYPHER_SIGNATURE_MAX_AGE_SECONDS = float(os.environ.get("ZYPHER_SIGNATURE_MAX_AGE_SECONDS", "30"))
# The mock QPU's duration (agents of type qpu and simulated devices).
ZYPHER_QPU_SECONDS = float(os.environ.get("ZYPHER_QPU_SECONDS", "1"))
# Program callbacks: hosts a callback_url may name (SSRF guard, jobs.programs), attempts,
# first backoff. Entries are host, host:port or host:* (an explicit port); the default is
# nothing in production and loopback with explicit ports in development. Link-local and
# cloud metadata addresses are refused whatever the list says.
_callback_default = (
    ""
    if os.environ.get("ZYPHER_ENV", "development").strip().lower() == "production"
    else "127.0.0.1:*,localhost:*,[::1]:*"
)
_callback_hosts = os.environ.get("ZYPHER_CALLBACK_ALLOWED_HOSTS", _callback_default)
ZYPHER_CALLBACK_ALLOWED_HOSTS = [
    host.strip().lower() for host in _callback_hosts.split(",") if host.strip()
]
ZYPHER_CALLBACK_MAX_ATTEMPTS = int(os.environ.get("ZYPHER_CALLBACK_MAX_ATTEMPTS", "5"))
ZYPHER_CALLBACK_BACKOFF_SECONDS = float(os.environ.get("ZYPHER_CALLBACK_BACKOFF_SECONDS", "1"))

# --- dashboard ---
# How often the dashboard re-renders its panels in the open page (seconds).
ZYPHER_DASHBOARD_REFRESH_SECONDS = float(os.environ.get("ZYPHER_DASHBOARD_REFRESH_SECONDS", "3"))
# ... and its last hour's figures (throughput, service time, fairness, idle gaps), which
# cost most of a refresh and change little in a few seconds.
ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS = float(
    os.environ.get("ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS", "30")
)
# Slack of the dashboard's fairness flag: a pair of users whose normalised service drew apart
# beyond devices x (C_max/w_u + C_max/w_v) plus this many seconds (jobs.monitoring.stats).
ZYPHER_DASHBOARD_LAG_SLACK_SECONDS = float(
    os.environ.get("ZYPHER_DASHBOARD_LAG_SLACK_SECONDS", "1.0")
)

# Retention (jobs.retention): with ZYPHER_PRUNE_AFTER_SECONDS > 0 every dispatcher deletes
# jobs that ended longer ago than that (at least an hour, the dashboard's window), every
# ZYPHER_PRUNE_INTERVAL_SECONDS, ZYPHER_PRUNE_BATCH_SIZE jobs per transaction. Off by default.
ZYPHER_PRUNE_AFTER_SECONDS = float(os.environ.get("ZYPHER_PRUNE_AFTER_SECONDS", "0"))
ZYPHER_PRUNE_INTERVAL_SECONDS = float(os.environ.get("ZYPHER_PRUNE_INTERVAL_SECONDS", "600"))
ZYPHER_PRUNE_BATCH_SIZE = max(1, int(os.environ.get("ZYPHER_PRUNE_BATCH_SIZE", "500")))

# /metrics: when set, a scrape must send `Authorization: Bearer <token>` (401 without it).
ZYPHER_METRICS_TOKEN = os.environ.get("ZYPHER_METRICS_TOKEN", "")

# --- production safety (issue 8) ---
# ZYPHER_ENV=production turns on the secure settings below and refuses to start (any
# manage.py command, the web server) with an unsafe configuration. The default,
# "development", is what `make run` and the tests use: a development key, loopback hosts,
# plain HTTP.
ZYPHER_ENV = os.environ.get("ZYPHER_ENV", "development").strip().lower()
DEVELOPMENT_SECRET_KEY = "zypher-insecure-development-key-change-me"


def production_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """What makes this configuration unsafe for production (empty: safe)."""
    environ = os.environ if environ is None else environ

    def on(name: str) -> bool:
        return environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}

    problems = []
    key = environ.get("DJANGO_SECRET_KEY", "")
    if not key or key == DEVELOPMENT_SECRET_KEY or key.startswith("django-insecure"):
        problems.append("DJANGO_SECRET_KEY must be set to a secret of your own")
    elif len(key) < 50 or len(set(key)) < 5:
        problems.append("DJANGO_SECRET_KEY must be at least 50 characters, not a pattern")
    if on("DJANGO_DEBUG"):
        problems.append("DJANGO_DEBUG must be off (it shows settings and tracebacks)")
    hosts = [host.strip() for host in environ.get("DJANGO_ALLOWED_HOSTS", "").split(",")]
    if not any(hosts) or "*" in hosts:
        problems.append("DJANGO_ALLOWED_HOSTS must name the site's hosts (not '*')")
    if on("ZYPHER_OPEN_MODE"):
        problems.append("ZYPHER_OPEN_MODE must be off (anyone could act as any user)")
    return problems


if ZYPHER_ENV == "production":
    from django.core.exceptions import ImproperlyConfigured

    if _problems := production_problems():
        raise ImproperlyConfigured(
            "ZYPHER_ENV=production refuses to start: " + "; ".join(_problems) + "."
        )
    ALLOWED_HOSTS = [
        host.strip() for host in os.environ["DJANGO_ALLOWED_HOSTS"].split(",") if host.strip()
    ]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SESSION_COOKIE_HTTPONLY = True
    # Behind a TLS-terminating proxy, set ZYPHER_PROXY_SSL_HEADER=1 (it must then strip any
    # X-Forwarded-Proto a client sends).
    if env_bool("ZYPHER_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("ZYPHER_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("ZYPHER_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("ZYPHER_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("ZYPHER_HSTS_PRELOAD", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"
    CSRF_TRUSTED_ORIGINS = [f"https://{host.lstrip('.')}" for host in ALLOWED_HOSTS]
elif ZYPHER_ENV != "development":
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"ZYPHER_ENV must be development or production, not {ZYPHER_ENV!r}")
