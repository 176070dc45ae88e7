# The two commands of the README:
#   make demo       the main job end to end on the default task (sets up .venv on first use)
#   make test       the test suite, every tier (sets up .venv on first use); CI runs this
# and, while working on the code:
#   make test-fast  the fast tier: the tests marked neither ros, slow nor gpu (no DDS, no node
#                   process, no training run; under 3 minutes on 2 cores)
# The tiers are pytest markers (pytest.ini): ros (talks over DDS: starts nodes, makes rclpy
# contexts or nodes), slow (over about 10 s on 2 cores: training runs, full pipelines), gpu
# (needs CUDA). A test not marked ros that makes an rclpy context or starts a node process
# fails (tests/conftest.py). PYTEST_ARGS adds pytest options to either, e.g. PYTEST_ARGS="-ra".
# TEST_WORKERS=N: `make test` runs the tests in N processes (pytest-xdist; each test file in
# one of them, each worker on a ROS domain of its own, torch on one thread); 0: one process.
VENV ?= .venv
PY := $(VENV)/bin/python
FAST := not ros and not slow and not gpu
TEST_WORKERS ?= 2
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup demo test test-fast bench clean

setup:
	@VENV=$(VENV) scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/robot-imitation pipeline --task push --out runs/pipeline --overwrite

test: setup
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests -m "$(FAST)" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bridge_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
