# Two entry points: `make demo` (main job on the embedded sample) and `make test` (the suite).
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
HOME_DIR ?= .ccd

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install demo test test-slow
install: $(STAMP)

# The backfill flow over the sample. It starts a temporary Prefect server, whose state also stays
# in the home; its first start creates the database, which can take over the default 20 s on a busy machine.
demo: $(STAMP)
	mkdir -p $(HOME_DIR)/prefect
	PREFECT_HOME=$(abspath $(HOME_DIR))/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180 \
		$(VENV)/bin/python -m flows.backfill data/sample --home $(HOME_DIR) --config configs/sample.toml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow
