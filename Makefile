# Developer entry points.  Only python3 is needed: the first target run creates .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3002
DB     ?= var/komm.sqlite3

.PHONY: install serve test lint check fmt-check policy-test soak bench bench-quick wrk clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

$(DB): | $(BIN)/.installed
	$(BIN)/komm-policy db init --demo --path $(DB)

serve: install $(DB)
	$(BIN)/komm-policy serve --host $(HOST) --port $(PORT) --policies policies \
		--directory sqlite:$(DB)

lint: install
	$(BIN)/ruff check .

check: install
	$(BIN)/komm-policy check --strict policies examples/origin-2026

fmt-check: install
	$(BIN)/komm-policy fmt --check policies examples

policy-test: install
	$(BIN)/komm-policy test --threshold 100 policies

# The suite runs on TEST_WORKERS processes (pytest-xdist; CI has 2 cores), a module's
# tests on one worker so its module-scoped servers start once.  TEST_WORKERS=0 runs it
# in this process (for -x/--pdb sessions, pass pytest's own options instead).
TEST_WORKERS ?= 2
test: install lint check fmt-check policy-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The decision log's fault matrix with more records (not part of `make test`; a few
# minutes): SIGTERM under load, writer SIGKILL x5, SIGKILL while the store is locked,
# store re-created, spool disk full (needs root for the tmpfs), main server SIGKILL.
SOAK_REQUESTS ?= 3000
soak: install
	mkdir -p var && rm -f var/soak-report.txt
	KOMM_SOAK_REQUESTS=$(SOAK_REQUESTS) KOMM_SOAK_REPORT=$(CURDIR)/var/soak-report.txt \
		$(BIN)/python -m pytest -q -s tests/test_log_faults.py
	cat var/soak-report.txt

# Benchmarks: extra packages from the `bench` group, wrk from Debian's packages.
$(BIN)/.bench-installed: pyproject.toml | $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get install -y -q wrk || { $$SUDO apt-get update -q && \
		$$SUDO apt-get install -y -q wrk; }; }

bench: $(BIN)/.bench-installed wrk
	$(BIN)/python -m bench.run

bench-quick: $(BIN)/.bench-installed wrk
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
