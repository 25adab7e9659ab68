# The two commands a newcomer needs: `make demo` and `make test`. Both do their own setup.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup check test soak lint typecheck deadcode unit integration e2e demo demo-stock bench bench-smoke lock clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

# Dead code (high-confidence findings only: framework hooks show up below 80%).
deadcode: setup
	$(VENV)/bin/vulture src --min-confidence 80

# The fast layer of the pyramid, for every edit: lint, types, import rules and the unit tests
# (no root, no sockets, no namespaces). Under a minute.
check: lint typecheck unit

# Everything, slowest tests listed at the end (a test that grows shows up there first).
# pytest's exit code 5 (no tests collected) fails the target on purpose.
test: lint typecheck
	$(PY) -m pytest tests --durations=25

# The million-frame hostile storms (docs/testing-hostile.md); `make test` runs short versions.
soak: setup
	HIGGS_HOSTILE_FRAMES=1000000 $(PY) -m pytest tests/integration/relay/test_hostile_frames.py -q --reruns 0

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

e2e: setup
	$(PY) -m pytest tests/e2e

demo: setup
	$(PY) -m higgs.lab.demo_product

# The first story: stock WireGuard tools only, no product code (the reference).
demo-stock: setup
	$(PY) -m higgs.lab.demo

# Writes bench/results/report-<date>.md and prints it; takes tens of minutes (see docs/benchmarks.md).
bench: setup
	$(PY) -m bench

bench-smoke: setup
	$(PY) -m bench --smoke

# Regenerates the constraints file from what is installed in the venv.
lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
