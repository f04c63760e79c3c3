# Customer Backbone template: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENGINE_SRC := $(CURDIR)/{{cookiecutter.project_slug}}/src

.PHONY: setup test demo lint clean

setup: $(VENV)/.ready

# The template's own tooling imports the engine straight from the template (a .pth file),
# so tests and benchmarks always run the engine that is being changed.
$(VENV)/.ready: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	echo "$(ENGINE_SRC)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/backbone-engine.pth"
	$(BIN)/python -m backbone.dev.localkafka jars
	touch $@

# PostgreSQL too: a throwaway server of its own unless TEST_POSTGRES_URL is set, and the tests
# that use it fail instead of skipping when it is missing (BACKBONE_REQUIRE_POSTGRES).
test: setup
	BACKBONE_REQUIRE_POSTGRES=1 scripts/with_postgres.sh $(BIN)/python -m pytest tests

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check tests bench scripts hooks
	$(BIN)/ruff format --check tests bench scripts hooks

clean:
	rm -rf $(VENV) .demo .pytest_cache
