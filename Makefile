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
# (no root, no sockets, no namespaces). Under a minute on a quiet machine: mypy keeps its
# incremental cache (.mypy_cache; only `make clean` drops it), the slowest ten unit tests are
# listed. UNIT_WORKERS=2 runs them on two pytest-xdist workers: slower on this loaded 2-core
# machine (each worker imports and collects everything again), so off by default (docs/testing.md:
# the figures).
check: lint typecheck unit

# Everything, slowest tests listed at the end (a test that grows shows up there first).
# pytest's exit code 5 (no tests collected) fails the target on purpose.
# Test modules run in parallel (pytest-xdist, one module per worker so that a module-scoped lab
# stays in one process): most of an e2e test's time is spent waiting on WireGuard, relay and
# session timers, not on the CPU (4 workers on this 2-core machine). Every lab has its own namespaces, names and addresses, so
# workers cannot see each other's; each worker checks for its own leftovers, the controller
# fails the run on any. TEST_WORKERS=0 runs every module in this one process.
TEST_WORKERS ?= 4
test: lint typecheck
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --durations=25

# The long versions of bounded tests (docs/hostile-input.md, docs/node.md "The host is always
# restored", docs/scaleout.md): the million-frame and million-datagram storms, 100 start/stop
# and 20 SIGKILL + restart cycles of the node, the 30 s bus and PostgreSQL outages of the
# scale-out, the network faults at their full durations (docs/faults.md), 20 hole-punch attempts
# (cone/cone, 19 within 10 s; docs/client.md). `make test` runs short versions of each.
soak: setup
	HIGGS_HOSTILE_FRAMES=1000000 $(PY) -m pytest tests/integration/relay/test_hostile_frames.py -q --reruns 0
	HIGGS_UDP_STORM=1000000 $(PY) -m pytest tests/integration/udp_relay/test_udp_relay_storm.py -q --reruns 0
	HIGGS_NODE_CYCLES=100 HIGGS_NODE_KILL_CYCLES=20 $(PY) -m pytest tests/e2e/test_node_host_restored.py -q --reruns 0 -k cycles
	HIGGS_SCALEOUT_OUTAGE_S=30 $(PY) -m pytest tests/integration/scaleout -q --reruns 0
	HIGGS_SOAK=1 $(PY) -m pytest tests/e2e/test_scaleout.py -q --reruns 0
	HIGGS_FAULTS_FULL=1 $(PY) -m pytest tests/e2e/test_faults.py -q --reruns 0 --timeout 1800
	HIGGS_PUNCH_ATTEMPTS=20 $(PY) -m pytest tests/e2e/test_hole_punch.py -q --reruns 0 -s -k 19_of_20

# The plugins of the other layers (schemathesis, hypothesis, anyio) serve no unit test; loading
# them is seconds of imports per process.
UNIT_WORKERS ?= 0
UNIT_PLUGINS := -p no:schemathesis -p no:hypothesispytest -p no:anyio
unit: setup
	$(PY) -m pytest tests/unit -n $(UNIT_WORKERS) $(UNIT_PLUGINS) --durations=10

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
