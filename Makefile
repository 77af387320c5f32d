# The README's two commands: `make demo` and `make test`. Both create or reuse .venv by themselves.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-images images lint format bench bench-scale serve lock clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,airflow,celery]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/matchmaking demo

# Two pytest-xdist workers: the deployment tests (Airflow on LocalExecutor and CeleryExecutor)
# mostly wait on their processes; serially the suite takes well over the 20-minute budget.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not images" -n 2

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow and not images"

# Both container images, built with podman (installed if missing) on a Debian-made base:
# sizes and installed packages against constraints.txt (docs/deployment.md, step 1).
images:
	scripts/build-images.sh

# Builds the images (cached layers reused) and runs what they ship (docs/testing.md).
test-images: $(STAMP)
	$(BIN)/python -m pytest -m images

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk not installed: the serving benchmark falls back to its asyncio client"
	$(BIN)/python -m benchmarks.run

# Processing and training at real volume (issue 14; about 40 min, not in `bench`'s default set):
# writes benchmarks/reports/scale.md, scratch data under .tmp/bench-scale.
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale

serve: $(STAMP)
	# The demo cities are loaded before the first request. Every setting is the environment's,
	# as for `matchmaking serve` and the image: MATCHMAKING_SERVE_PORT=9000 make serve
	MATCHMAKING_SERVE_HOT_CITIES=$${MATCHMAKING_SERVE_HOT_CITIES-jakarta,bangkok,ho-chi-minh-city} $(BIN)/matchmaking serve

# Re-resolve the pins from pyproject.toml in a scratch venv: the extras and the scoring image's
# dependency group (`--group` needs pip 25.1+, newer than the one venv bundles).
lock:
	rm -rf .tmp/lock && $(PYTHON) -m venv .tmp/lock
	.tmp/lock/bin/python -m pip install --quiet --upgrade pip
	.tmp/lock/bin/pip install --quiet '.[dev,airflow,celery,deploy]' --group serving
	( echo '# Pinned versions used by every install (make, CI, MLproject python_env).'; \
	  echo '# Regenerate: make lock (resolves pyproject.toml in a scratch venv and freezes it).'; \
	  .tmp/lock/bin/pip freeze --exclude matchmaking ) > constraints.txt

clean:
	rm -rf $(VENV) data mlruns .pytest_cache .mypy_cache .ruff_cache
