# Two commands for readers and CI (README.md, Quick start):
#   make book   build the book into _build/html, executing every notebook
#   (and for instructors: make book-student, the same book without solutions)
#   make test   ruff, then pytest: the unit tests in tests/ and every notebook in book/
#   (and for CI: make test-notebooks TOYREC_SEED=1, every notebook in book/ again with other
#   training seeds; the chapters' assertions check claims that must hold for any seed)
# Each creates .venv with python3 when it is missing and installs the pinned tools once per
# change of requirements-dev.txt or pyproject.toml.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.toyrec-installed

JB_FLAGS ?= -W -n --keep-going
# xdist with nbval only works when each notebook stays on one worker: --dist loadfile.
PYTEST_FLAGS ?= -n 2 --dist loadfile

# Offline copies of MathJax, RequireJS and the ipywidgets bundle (see book/_assets_src/).
ASSETS_SRC := book/_assets_src
NPM_DIR := _build/npm
VENDOR := book/_vendor
VENDORED := $(VENDOR)/.complete

.PHONY: help book book-student test test-notebooks assets movielens clean

help:
	@echo "make book   build the book into _build/html (executes every notebook)"
	@echo "make book-student   the same book without solutions, into $(STUDENT)/_build/html"
	@echo "make test   ruff + unit tests + every notebook in book/"
	@echo "make test-notebooks TOYREC_SEED=1   every notebook in book/ with training seed 1"
	@echo "make movielens  fetch MovieLens-100K from the package index into data/ml-100k"
	@echo "make clean  remove _build and the vendored JavaScript"

# torch is installed on its own first, and only when missing: asked for without the exact
# version, pip would fetch a multi-GB CUDA build. A torch that is already there is kept.
$(INSTALLED): requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') is already installed"; \
	else \
		$(PY) -m pip install torch==2.13.0; \
	fi
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install -e ".[book]"
	@touch $@

# Without npm (or without the registry) the book still builds: pages then load MathJax and
# the widget bundle from their CDNs (book/_assets_src/offline_assets.py decides).
$(VENDORED): $(ASSETS_SRC)/package.json $(ASSETS_SRC)/package-lock.json $(ASSETS_SRC)/require-config.js
	@rm -rf $(VENDOR)
	@mkdir -p $(NPM_DIR)
	@cp $(ASSETS_SRC)/package.json $(ASSETS_SRC)/package-lock.json $(NPM_DIR)/
	@if command -v npm >/dev/null 2>&1 \
		&& npm ci --prefix $(NPM_DIR) --ignore-scripts --no-audit --no-fund --loglevel=error; then \
		mods=$(NPM_DIR)/node_modules; \
		widgets=$(VENDOR)/@jupyter-widgets; \
		mkdir -p $$widgets/html-manager/dist; \
		cp -R $$mods/mathjax/es5 $(VENDOR)/mathjax; \
		cp $$mods/requirejs/require.js $(ASSETS_SRC)/require-config.js $(VENDOR)/; \
		find $$mods/@jupyter-widgets/html-manager/dist -maxdepth 1 -type f ! -name '*.map' \
			-exec cp {} $$widgets/html-manager/dist/ \; ; \
		cp $$widgets/html-manager/dist/*.{woff2,woff,ttf,eot,svg} $$widgets/; \
		touch $@; \
		echo "vendored MathJax, RequireJS and the ipywidgets bundle into $(VENDOR)"; \
	else \
		echo "WARNING: no npm, or npm ci failed: pages will load MathJax and ipywidgets from CDNs" >&2; \
	fi

assets: $(VENDORED)

# MovieLens-100K (chapter 7), never committed (GroupLens's terms): `pip download` of the
# wheel recbole==1.2.1 into the cache ($$TOYREC_CACHE or ~/.cache/toyrec), SHA-256 checked,
# imported into data/ml-100k. The chapter finds the wheel in the cache.
ML100K := data/ml-100k/schema.json
$(ML100K): | $(INSTALLED)
	$(PY) -m toyrec_helpers import-movielens --fetch pypi --overwrite data/ml-100k

movielens: $(ML100K)

book: $(INSTALLED) assets $(ML100K)
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

# The student edition: the same pages with every solution hidden (_config_student.yml over
# _config.yml). It reuses the notebook outputs that `make book` cached in _build/.jupyter_cache
# (a notebook not in the cache is executed). tests/test_student_edition.py checks the HTML.
STUDENT := _build/student

book-student: $(INSTALLED) assets
	$(PY) book/_ext/student_config.py _config.yml _config_student.yml $(STUDENT)/_config.yml
	$(VENV)/bin/jupyter-book build . --config $(STUDENT)/_config.yml --path-output $(STUDENT) \
		$(JB_FLAGS)

test: $(INSTALLED) $(ML100K)
	$(VENV)/bin/ruff check .
	@$(PY) -m pytest $(PYTEST_FLAGS) || { rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; fi; exit $$rc; }

# The notebooks alone, under nbval, with their training seeds (initialisation, shuffling,
# episode sampling, bootstrap) taken from TOYREC_SEED; the data and the user split stay
# fixed. CI runs it with TOYREC_SEED=1 after `make test` (seed 0).
TOYREC_SEED ?= 0

test-notebooks: $(INSTALLED) $(ML100K)
	@TOYREC_SEED=$(TOYREC_SEED) $(PY) -m pytest $(PYTEST_FLAGS) book || { rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no notebooks" >&2; fi; exit $$rc; }

clean:
	rm -rf _build $(VENDOR)
