# One entry point for people and CI. Everything lives in a local venv (.venv).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/cogo: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(BIN)/cogo

install: $(BIN)/cogo

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

test: install browser promtool
	PATH="$(CURDIR)/.tools/usr/bin:$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check cogo tests scripts
	$(BIN)/ruff format --check cogo tests scripts
	$(BIN)/mypy
	$(BIN)/vulture cogo scripts/vulture_whitelist.py
	$(BIN)/python scripts/import_graph.py

.PHONY: install up browser promtool test lint
