# One entry point for people and CI. Everything lives in a local venv (.venv).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

# `make up` installs what running needs and nothing else; the test, lint and docs tools
# come with `make test` / `make lint` / `make docs` (pyproject's extras)
$(BIN)/cogo: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $(BIN)/cogo

DEV := $(VENV)/.dev-tools
$(DEV): $(BIN)/cogo pyproject.toml
	$(BIN)/pip install -q -e '.[test,lint,docs]'
	@touch $(DEV)

install: $(BIN)/cogo

dev: $(DEV)

up: install
	$(BIN)/cogo up

# headless Chromium for the dashboard's browser test: Debian's package (Playwright only
# drives it; `playwright install` downloads browsers and is never used)
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

# promtool, to check /metrics the way Prometheus users will: the binary out of Debian's
# `prometheus` package, unpacked into .tools/ (nothing installed, no server started)
PROMTOOL := .tools/usr/bin/promtool
$(PROMTOOL):
	@mkdir -p .tools/deb
	@cd .tools/deb && { apt-get download prometheus >/dev/null 2>&1 \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x -C .. ./usr/bin/promtool \
	  && rm -f prometheus_*.deb; } \
	  || echo "warning: could not fetch promtool; the metrics test checks names without it"

promtool: $(PROMTOOL)

test: dev browser promtool
	PATH="$(CURDIR)/.tools/usr/bin:$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider

lint: dev
	$(BIN)/ruff check cogo tests scripts examples
	$(BIN)/ruff format --check cogo tests scripts examples
	$(BIN)/mypy
	$(BIN)/mypy tests/typing  # what the typed client lets mypy infer (assert_type)
	$(BIN)/vulture cogo scripts/vulture_whitelist.py
	$(BIN)/python scripts/import_graph.py

# the docs site: docs/ plus the reference pages scripts/gen_reference.py generates from the
# code during the build (a mkdocs hook); --strict turns every warning (a broken link, a page
# missing from the nav) into a failure
docs: dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

docs-serve: dev
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

.PHONY: install dev up browser promtool test lint docs docs-serve
