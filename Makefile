# The two commands of the README: `make report` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?=
SEEDS ?= 1

.PHONY: setup report preview book test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[report,dev]'
	touch $@

setup: $(VENV)/.installed

# Runs the study (default profile: paper with CUDA, else preview), then builds _build/html/index.html.
report: setup
	$(PY) -m srlib sweep $(if $(PROFILE),--profile $(PROFILE)) --seeds $(SEEDS)
	$(MAKE) book

preview: setup
	$(PY) -m srlib sweep --profile preview --seeds $(SEEDS)

book: setup
	$(PY) -m srlib book

test: setup
	$(PY) -m ruff check srlib tests
	$(PY) -m pytest -q

bench: setup
	$(PY) -m srlib bench --json results/bench_cpu.json

clean:
	rm -rf _build book/executed
