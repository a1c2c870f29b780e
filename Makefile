# The two commands a new user needs: `make run` and `make test`. Both bootstrap .venv from python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vecq up

# Two pytest processes, a test file each at a time (module fixtures stay whole): most of a test's time is spent
# waiting for its stack's processes, so two run in about 60 % of the time of one on 2 cores. TEST_PROCESSES=0: one.
TEST_PROCESSES ?= 2
test: $(STAMP) browser
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# The console's browser tests drive Debian's chromium (never a browser downloaded by playwright). Installed here
# when missing and we are root with apt-get; otherwise nothing happens and those tests skip, saying why.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the console tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium >/dev/null; } || echo "warning: could not install chromium; the console tests will skip"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Issue #16: 10 minutes of searches, writes, an ingest and chaos (SIGKILLs, a Redis restart) on a loopback stack;
# exits non-zero if a promise broke. SOAK_ARGS="--quick" for a ~2-minute smoke run.
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache
