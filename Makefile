# One command for each habit (CONTRIBUTING.md says when to use which).
PYTHON ?= python
PYTEST = $(PYTHON) -m pytest -p no:cacheprovider
C_SOURCES = $(shell git ls-files 'csrc/*.c' 'csrc/*.h')

.PHONY: dev build test-fast test lint format typecheck bench clean

dev:            ## editable install with the test and lint tools, C parts built in place
	$(PYTHON) -m pip install -e ".[test,lint]"

build:          ## rebuild the C parts in place after a change in csrc/ (seconds, not a reinstall)
	$(PYTHON) setup.py -q build_ext --inplace

test-fast: build  ## unit tests and the smoke test: report code, formats, parsing (~10 s)
	$(PYTEST) -q tests/unit tests/smoke

test: build     ## the whole suite, as CI runs it
	$(PYTEST) -q tests

lint:           ## every check CI makes on the code itself
	ruff check .
	ruff format --check .
	clang-format --dry-run --Werror $(C_SOURCES)
	mypy

format:         ## rewrite the code in the house style
	ruff check --fix .
	ruff format .
	clang-format -i $(C_SOURCES)

typecheck:
	mypy

bench:          ## overhead against the untraced run and memray, and report times
	$(PYTHON) benchmarks/compare.py
	$(PYTHON) benchmarks/report_times.py

clean:
	rm -rf build src/tracer/*.so src/tracer/_native.c src/tracer/_native.o
