# Zypher: one image, four roles chosen by the command (docker/entrypoint.sh):
#   web (default)  gunicorn on 0.0.0.0:8080      dispatcher  manage.py run_dispatcher
#   migrate        migrations, then exits        agent       manage.py run_device ...
# Configured only through the environment (README, "Configuration" and "Containers").

# Build stage: the runtime dependencies in a virtual environment, copied whole below, so
# that pip's settings (index, certificate: build arguments, never in a layer) stay here.
FROM python:3.13-slim AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
COPY docker/requirements.txt /tmp/requirements.txt
RUN set -eu; \
    for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CERT; do \
        eval "value=\${$name:-}"; [ -n "$value" ] || unset "$name"; \
    done; \
    python -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt

FROM python:3.13-slim
# tini as PID 1: signals reach gunicorn and the dispatcher, and orphans are reaped.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home zypher
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The code belongs to root and is read-only for the service; only var/ is its own.
COPY . /app
RUN python manage.py collectstatic --noinput -v0 \
    && mkdir -p /app/var \
    && chown -R zypher:zypher /app/var \
    && chmod 0755 /app/docker/entrypoint.sh
USER zypher
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/app/docker/entrypoint.sh"]
CMD ["web"]
