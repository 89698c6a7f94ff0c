# make install: .venv with lungscope and everything it needs (re-run only when pyproject.toml or this file changes)
# make lint:    install if needed, then ruff and mypy over the code
# make test:    install if needed, then lint, then the test suite
# make demo:    install if needed, then the main job on the bundled model and sample images
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install java browser lint test demo benchmarks clean

install: $(STAMP) java

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# pytorch-grad-cam is only the tests' reference implementation of Grad-CAM. Its declared requirements would pull
	@# opencv-python (the GUI build) over our headless OpenCV, so it is installed without them (it needs only ttach).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps grad-cam==1.5.7 ttach==0.0.3
	@touch $(STAMP)

# Java 17 for PySpark (the Spark engine of `features` and `predict`): Debian's headless JRE where none is installed.
java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	  else echo "note: java not installed (needs root and apt-get); Spark tests will fail"; fi; }

# Headless Chromium for the browser tests of the HTML report and the web page (Debian's package; no downloads).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed (needs root and apt-get); browser tests will be skipped"; fi; }

# Lint: ruff (config in pyproject.toml [tool.ruff]), then mypy (files and options in [tool.mypy]).
lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

test: install browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job: the bundled model predicts the sample X-rays, explains each with Grad-CAM, writes a results page.
demo: install
	$(BIN)/lungscope predict samples --explain gradcam --out demo-output --html

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
