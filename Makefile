# The README's two commands are `make demo` and `make test`; both install
# what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/rlhf demo

test: install
	$(PY) -m pytest -q

protos: install
	$(PY) -m shared.protogen

clean:
	rm -rf $(VENV) model-store runs .pytest_cache
