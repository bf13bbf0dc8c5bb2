# The commands people type. Each one sets up .venv from requirements.txt first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
WEB_WORKERS ?= 2
export HOST PORT WEB_WORKERS

.PHONY: run test test-sqlite test-postgres bench reliability lint format browser clean \
	image compose-up compose-down

# The client (./client in requirements.txt) is reinstalled when its sources change.
$(VENV)/.installed: requirements.txt docker/requirements.txt client/pyproject.toml $(wildcard client/src/zypher_client/*.py)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

# Start the web server (gunicorn) and the dispatcher together until Ctrl-C. The
# supervisor restarts a dispatcher that died, with a backoff, and logs it (devices/supervise.py).
run: export ZYPHER_OPEN_MODE ?= 1
run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py ensure_admin
	@echo "Zypher on http://$(HOST):$(PORT)/  (API /api/jobs/, docs /api/docs/, admin /admin/)"
	@$(PY) -m devices.supervise

# Chromium for the browser tests comes from Debian's packages (never a downloaded build).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

test: test-sqlite test-postgres

# Tests marked one_pass exercise processes, protocols or pure computation (the fair-share
# model, splines), not the database: when a PostgreSQL pass follows, the SQLite pass skips
# them, so `make test` pays for them once.
test-sqlite: $(VENV)/.installed browser
	ZYPHER_POSTGRES_PASS_FOLLOWS=$$($(PY) tests/support/pgcluster.py --available && echo 1) \
	  $(VENV)/bin/pytest -q --durations=20

test-postgres: $(VENV)/.installed browser
	$(PY) tests/support/pgcluster.py -- $(VENV)/bin/pytest -q --durations=20

bench: $(VENV)/.installed
	$(PY) tests/support/pgcluster.py -- $(PY) -m bench.run_all performance

# The soak, the fault drill and the long fuzz run (docs/reliability.md).
reliability: $(VENV)/.installed
	$(PY) tests/support/pgcluster.py -- $(PY) -m bench.run_all reliability

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Containers (README, "Containers"): docker if installed, else podman; podman-compose
# when there is no `docker compose`. Extra flags through IMAGE_FLAGS / COMPOSE_FLAGS;
# DISPATCHERS=3 scales the dispatcher out, QPU=1 adds the qpu profile's two agents.
ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || \
	{ command -v podman >/dev/null 2>&1 && echo podman; } || echo docker)
IMAGE ?= zypher:latest
COMPOSE ?= $(if $(filter podman,$(ENGINE)),podman-compose,docker compose)

image:
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) $(IMAGE_FLAGS) -t $(IMAGE) .

compose-up: image
	ZYPHER_IMAGE=$(IMAGE) $(COMPOSE) $(COMPOSE_FLAGS) $(if $(QPU),--profile qpu) up -d \
		$(if $(DISPATCHERS),--scale dispatcher=$(DISPATCHERS))

# The profile and --remove-orphans reach the agents and (podman-compose) the scaled dispatchers.
compose-down:
	ZYPHER_IMAGE=$(IMAGE) $(COMPOSE) $(COMPOSE_FLAGS) --profile qpu down --remove-orphans

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
