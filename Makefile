# Developer entry points. CI runs `bash .ci/run` (the default test suite, services required).
PYTHON ?= .venv/bin/python
PYTEST ?= .venv/bin/pytest

.PHONY: test guarantees bench

# The default suite: every test except the long guarantee runs (pyproject: -m "not slow").
test:
	$(PYTEST)

# The whole guarantees suite (crash points, faults, the meter model, hostile input, the
# secret canary), fast and slow alike; its figures print at the end and are appended to
# test-artifacts/guarantees.jsonl. Under 15 minutes on the 2-core machine.
guarantees:
	mkdir -p test-artifacts
	BOOKBAG_TEST_REQUIRE_SERVICES=1 $(PYTEST) -m "slow or not slow" -p no:cacheprovider tests/guarantees
	$(PYTHON) -m tests.guarantees.report

# The benchmark matrix (bench/run.py; `make bench ARGS=--quick` for the headline scenarios).
bench:
	$(PYTHON) bench/run.py $(ARGS)
