# make install: .venv with lungscope and everything it needs (re-run only when pyproject.toml changes)
# make test:    install if needed, then the test suite
# make demo:    install if needed, then the main job on the bundled samples
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test demo benchmarks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/lungscope audit samples

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
