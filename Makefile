# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_PROFILES_PATH := $(CURDIR)/src/tuneloop/assets/prefect-profiles.toml
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast ui clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first: any other spec pulls a multi-GB CUDA build (GPU users: see README).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tuneloop demo

# Two workers (pytest-xdist): most slow tests wait on a server, a worker or a process; TEST_WORKERS=1 runs serially.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# The inner loop: no training, no Prefect, no servers or processes (`slow` and its finer marks in pyproject.toml).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every bench/*.py once, short settings (about 20 min on 2 idle CPU cores); peers come from the bench extra.
bench: $(STAMP)
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[bench]'
	$(BIN)/python bench/run_all.py

ui: $(STAMP)
	mkdir -p .tuneloop/prefect  # Prefect creates only the last level of its home
	PREFECT_HOME=$(CURDIR)/.tuneloop/prefect $(BIN)/prefect server start --port 4200

clean:
	rm -rf $(VENV) .tuneloop .pytest_cache
