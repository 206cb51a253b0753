# Two commands on a fresh machine: `make demo` (set up + main job on built-in data)
# and `make test` (set up + the test suite). Both install uv first if it is missing.
PY ?= python3
UV := $(PY) -m uv

.PHONY: setup demo test lint bench clean

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet uv
	$(UV) sync --frozen --all-extras --compile-bytecode

demo: setup
	$(UV) run segflow demo

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

test: setup lint
	$(UV) run pytest -q

bench: setup
	$(UV) run python benchmarks/run_all.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache out
