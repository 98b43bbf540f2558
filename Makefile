# One entry point for people and CI: every install step lives here.
#   make run    set everything up and run the server on its embedded broker
#   make test   set everything up and pass the tests (what .ci/run calls)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test test-pure lint setup system-deps bench loadtest clean annotate

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the compiled core is built from _core/ and from the pure sources it compiles
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard _core/*.pyx _core/*.pxd) \
		aiosrv/_fanout_py.py aiosrv/_wire_py.py
	$(BIN)/pip install --quiet -e '.[test,redis,loadtest]'
	touch $(STAMP)

setup: $(STAMP)

# Programs the integration tests drive for real (redis-server; later nginx,
# caddy, chromium). Installed from Debian's packages when missing.
system-deps:
	@sh scripts/system-deps.sh

run: setup
	$(BIN)/aiosrv serve

lint: setup
	$(BIN)/ruff check aiosrv tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two passes: the compiled core on uvloop (as in production), then the
# pure-Python twin on asyncio's own loop, so both cores and both loops run
# every test.
test: setup system-deps lint
	AIOSRV_EXPECT_COMPILED=1 AIOSRV_TEST_LOOP=uvloop $(BIN)/python -m pytest -q -p no:cacheprovider
	AIOSRV_NO_EXTENSIONS=1 AIOSRV_TEST_LOOP=asyncio $(BIN)/python -m pytest -q -p no:cacheprovider

# cython -a of the core as compiled (the .py with its .pxd, and the .pyx):
# yellow lines are where the C code still calls into Python.
annotate: $(BIN)/python
	AIOSRV_CYTHON_ANNOTATE=1 $(BIN)/pip install --quiet -e .
	@echo "annotations: build/cython/aiosrv/_fanout_c.html, build/cython/aiosrv/_wire_c.html"

# A Locust scenario against a server it starts (loadtest/README.md), e.g.
#   make loadtest ARGS="--scenario ramp -u 2000 -t 60s"
loadtest: setup
	bash loadtest/run.sh --start-server $(ARGS)

bench: setup
	bash bench/setup.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info aiosrv/*.so _core/*.c _core/*.html
