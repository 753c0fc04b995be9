# The two commands of the README: `make report` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?=
SEEDS ?= 1

.PHONY: setup report preview book test test-fast lint bench lab clean

# Quiet: pip's progress is hidden (errors still show), and so is setuptools' "Editable installation" notice,
# which asks nothing of us. Measured here: 80 s with pip's cache warm (torch's CUDA wheels dominate a first download).
$(VENV)/.installed: pyproject.toml
	@echo "setup: installing srlib with torch, Jupyter Book, JupyterLab and the test tools into $(VENV)" \
	  "(about 6.6 GB; 1-2 min from pip's cache, several more on a first download) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e '.[report,dev]'
	@touch $@
	@echo "setup: done"

setup: $(VENV)/.installed

# Runs the study (default profile: paper with CUDA, else preview), then builds _build/html/index.html.
# RECORDS=DIR (e.g. results/paper): trains nothing; the book shows the records in DIR and names missing runs.
# VARIANTS=study|controls|sr-models|all (or variant names, comma-separated): which variants (default: study).
# DATA=PATH: the study on your own images (an ImageFolder tree or Hub Parquet; the Guide, "Your own data").
# DATASET=NAME: with RECORDS, the results page of this dataset (its name or key, as the page names the others).
report: setup
	$(PY) -m srlib sweep --seeds $(SEEDS)$(if $(PROFILE), --profile $(PROFILE))$(if $(RECORDS), --records $(RECORDS))$(if $(VARIANTS), --variants $(VARIANTS))$(if $(DATA), --data $(DATA))$(if $(DATASET), --dataset $(DATASET))

preview: setup
	$(PY) -m srlib sweep --profile preview --seeds $(SEEDS)

book: setup
	$(PY) -m srlib book

lint: setup
	$(PY) -m ruff check srlib tests
	$(VENV)/bin/lint-imports .importlinter

# What CI runs: every test, the slow ones too.
test: lint
	$(PY) -m pytest -q

# While editing: the tests not marked slow (each of those takes over ~20 s: real data, notebook sweeps, a real
# Slurm); about 4 minutes on a 2-core machine. `make test` before a commit.
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m srlib bench --json results/bench_cpu.json

# JupyterLab on notebooks/ with this environment's python3 kernel. Kernels start in the project root, as in
# `srlib sweep`, so a notebook's `out = "runs"` reads the existing records (nothing retrains). Offline: no news
# feed, no update check, no extension manager. tests/test_lab.py starts the lab with these options.
LAB_OPTIONS := --ServerApp.root_dir=notebooks --MappingKernelManager.root_dir=$(CURDIR) --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.extension_manager=readonly
lab: setup
	$(PY) -m jupyter lab $(LAB_OPTIONS) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf _build book/executed
