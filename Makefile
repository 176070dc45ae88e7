# The two commands of the README:
#   make demo   the main job end to end on the default task (sets up .venv on first use)
#   make test   the test suite (sets up .venv on first use)
VENV ?= .venv
PY := $(VENV)/bin/python
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup demo test bench clean

setup:
	@VENV=$(VENV) scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/robot-imitation pipeline --task push --out runs/pipeline

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bridge_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
