"""gunicorn settings shared by `make run`, the tests and the benchmarks (read from the
working directory). The app is served through ASGI by uvicorn workers, so that a
synchronous /predict waits on an asyncio future instead of holding a thread; see the
README's design notes for the measurements behind this choice."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
graceful_timeout = 10

# The web workers take their database connections from Django's pool (zypher/settings.py):
# under ASGI a request's synchronous part runs in a new thread, which would otherwise open
# a connection of its own.
os.environ.setdefault("ZYPHER_DB_POOL", "1")
# Gunicorn 27's control socket sits at one path per user ($HOME/.gunicorn/gunicorn.ctl):
# every server on the host would take it over from the last. Zypher is run by signals
# (devices/supervise.py, the tests, containers), so it is off.
control_socket_disable = True
