"""ASGI entry point."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zypher.settings")
django.setup(set_prefix=False)

# One thread hop per request to a synchronous view (jobs.api.middleware explains why).
from jobs.api.connection_check import install_pool_check  # noqa: E402
from jobs.api.direct_submit import DirectSubmit  # noqa: E402
from jobs.api.middleware import OneHopASGIHandler  # noqa: E402

# The pool's check without a round trip for connections just given back.
install_pool_check()

# The common single submit is answered in front of Django (jobs.api.direct_submit).
application = DirectSubmit(OneHopASGIHandler())
