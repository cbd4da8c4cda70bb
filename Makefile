# The README's commands.  `make test PYTEST_ARGS="tests/integration -x"` passes options on.
VENV        ?= .venv
PYTHON      ?= python3
PY           = $(VENV)/bin/python
CONFIG      ?= config/example.yaml
PYTEST_ARGS ?=
APT_GET      = DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: help install rabbitmq-deps deploy-deps test bench run tail lint clean

help:
	@echo "make install | test [PYTEST_ARGS=...] | bench [BENCH_ARGS=...] | run | tail | lint | clean"

install: $(VENV)/.installed

# Debian's own python3 ships without ensurepip: add python3-venv when we may (root).
$(PY):
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); [ "$$(id -u)" = 0 ] \
	  && apt-get update && $(APT_GET) install -y python3-venv && $(PYTHON) -m venv $(VENV); }

PIP = $(PY) -m pip install -q --disable-pip-version-check

# Re-run pip only when pyproject.toml changes.  `run` and `tail` need the package alone;
# `test` (and `install`) add the test tools.
# -qq: the quickstart's output is multiwatch's own (pip still prints its errors).
$(VENV)/.installed-run: pyproject.toml | $(PY)
	@echo "installing multiwatch into $(VENV) (first run only)"
	@$(PY) -m pip install -qq --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) -e '.[test]'
	touch $@

# The test suite starts its own private RabbitMQ node; it only needs the program.
rabbitmq-deps:
	@PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; command -v rabbitmq-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && $(APT_GET) install -y rabbitmq-server; \
	  else echo "rabbitmq-server is missing: run 'sudo make rabbitmq-deps'" \
	    "(apt-get install rabbitmq-server)" >&2; exit 1; fi; }

# tests/deploy runs `systemd-analyze verify` on the units in systemd/ and `promtool` on the
# alert rules in config/prometheus/ (no running systemd or Prometheus needed).  Each
# program:package pair is installed only when the program is missing.
DEPLOY_TOOLS = systemd-analyze:systemd promtool:prometheus
deploy-deps:
	@missing=""; for tool in $(DEPLOY_TOOLS); do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update \
	    && $(APT_GET) install -y --no-install-recommends $$missing; \
	  else echo "missing for tests/deploy:$$missing: run 'sudo make deploy-deps'" \
	    "(apt-get install$$missing)" >&2; exit 1; fi; }

test: install rabbitmq-deps deploy-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Figure printers, not tests: see bench/README.md.  BENCH_ARGS="--quick" or "--only burst".
bench: install rabbitmq-deps
	$(PY) bench/run.py $(BENCH_ARGS)

run: $(VENV)/.installed-run
	@mkdir -p demo/music demo/downloads
	$(VENV)/bin/multiwatch run -c $(CONFIG)

tail: $(VENV)/.installed-run
	$(VENV)/bin/multiwatch tail -c $(CONFIG)

lint:
	@if [ -x $(VENV)/bin/ruff ]; then $(VENV)/bin/ruff check multiwatch tests; \
	  else echo "ruff not installed: $(PY) -m pip install -e '.[dev]'"; fi
	@if [ -x $(VENV)/bin/mypy ]; then $(VENV)/bin/mypy multiwatch tests; \
	  else echo "mypy not installed: $(PY) -m pip install -e '.[dev]'"; fi

clean:
	rm -rf $(VENV) demo .multiwatch-state build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
