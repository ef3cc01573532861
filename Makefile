# Two commands for a newcomer: `make demo` and `make test`. Everything else is a building block.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTSAE := $(BIN)/protsae
DEMO_CONFIG ?= configs/demo.toml
export PROTSAE_PORT ?= 8000

.PHONY: demo test install assets browser dssp lint format typecheck serve db-upgrade demo-store clean

install: $(VENV)/.installed assets dssp

# torch is pinned first so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
# The ray extra (the Ray engine, ~400 MB) is installed so that its tests run.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray,saelens]'
	touch $@

assets: static/vendor/.installed
static/vendor/.installed: package.json package-lock.json scripts/install-assets.sh
	./scripts/install-assets.sh
	touch $@

# Debian's Chromium for the browser tests (Playwright's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Debian's DSSP 4 (mkdssp) for the structure concepts (secondary structure, accessibility).
dssp:
	@command -v mkdssp >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dssp >/dev/null)

db-upgrade: install
	$(PROTSAE) db upgrade

demo-store: db-upgrade
	@if [ -f $(DEMO_CONFIG) ]; then $(PROTSAE) trainer run $(DEMO_CONFIG); \
	else echo "no $(DEMO_CONFIG): serving the store as it is"; fi

demo: demo-store
	$(PROTSAE) serve

serve: db-upgrade
	$(PROTSAE) serve

test: install browser
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules static/vendor
