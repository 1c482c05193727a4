# Developer entry points. CI runs `bash .ci/run` (the default test suite, services required).
PYTHON ?= .venv/bin/python
PYTEST ?= .venv/bin/pytest
# uv resolves the lock; it lives in a venv of its own, pinned like everything else.
UV_VERSION ?= 0.13.9
TOOLS ?= .venv-tools

.PHONY: test guarantees bench lock deps-latest

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

$(TOOLS)/bin/uv:
	python3 -m venv $(TOOLS) && $(TOOLS)/bin/pip install -q 'uv==$(UV_VERSION)'

# Refresh requirements.lock to today's newest releases within pyproject.toml's ranges
# (runtime and test extra, every platform, Python 3.11 and up). Then run `make test`
# in a fresh venv (rm -rf .venv) before committing the new lock: docs/dependencies.md.
lock: $(TOOLS)/bin/uv
	$(TOOLS)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 \
		--upgrade --quiet --custom-compile-command "make lock" -o requirements.lock

# The suite against the newest releases (the lock ignored), in a throwaway venv:
# drift seen before the next `make lock` brings it in (docs/dependencies.md).
deps-latest:
	rm -rf .venv-latest
	python3 -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade -e '.[test]'
	.venv-latest/bin/pip list --format=freeze > .venv-latest/versions.txt
	BOOKBAG_TEST_REQUIRE_SERVICES=1 .venv-latest/bin/pytest -p no:cacheprovider $(ARGS)
