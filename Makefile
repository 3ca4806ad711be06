# Two entry points (see README): `make run` (ARGS="--max_steps 50 -v" passes flags on) and `make test`. Both create
# .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and alone: on CPU machines this finds the local CPU build; see constraints.txt.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pipelines.run local $(ARGS)

test: $(STAMP)
	# The architecture first (pyproject.toml [tool.importlinter]): an upward import or a file circle fails here.
	$(VENV)/bin/lint-imports
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
