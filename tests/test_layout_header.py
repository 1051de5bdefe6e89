"""src/shmring/shmring_layout.h is what _layout.py generates, and a real C compiler agrees.

The header is checked in (the C core and examples/c_reader include it); regenerating it must
give the same bytes, or the C side would run on a stale layout. A C program built with the
system compiler (`cc`) prints every integer constant and struct size the header defines,
which must equal _layout's; a header whose offsets disagree with its structs must not build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import WAIT

from shmring import _layout as L
from shmring import _layout_header
from shmring._segment import MAX_NAME

CC_FLAGS = ("-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror")
DEFINE = re.compile(r"^#define SHMRING_(\w+) (.+?)(?: /\*.*)?$", re.MULTILINE)
STRUCTS = {"header": 256, "control": 256, "descriptor": 104, "reader": 64, "group": 64}

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


def _integer_defines(text: str) -> dict[str, str]:
    return {name: value for name, value in DEFINE.findall(text) if not value.startswith('"')}


def _cc(directory: Path, include: Path, program: str) -> subprocess.CompletedProcess[str]:
    """Build `program` (which includes shmring_layout.h from `include`) with the system cc."""
    source = directory / "probe.c"
    source.write_text(f'#include "shmring_layout.h"\n{program}')
    command = ["cc", *CC_FLAGS, f"-I{include}", "-o", str(directory / "probe"), str(source)]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT)


def test_the_checked_in_header_is_what_layout_py_generates() -> None:
    assert _layout_header.HEADER.read_text() == _layout_header.render(), (
        "src/shmring/shmring_layout.h is stale: run python -m shmring._layout_header"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "shmring._layout_header", "--check"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert checked.returncode == 0, checked.stderr


def test_every_public_constant_of_layout_py_is_defined() -> None:
    defined = dict(DEFINE.findall(_layout_header.HEADER.read_text()))
    public = {
        name
        for name, value in vars(L).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }
    assert public - _layout_header.SKIPPED <= set(defined)
    assert defined["MAGIC"] == '"\\x93SHMRING"'


@needs_cc
def test_the_compiler_sees_layout_py_s_values(tmp_path: Path) -> None:
    defines = _integer_defines(_layout_header.HEADER.read_text())
    lines = [f'printf("{name} %llu\\n", (unsigned long long)SHMRING_{name});' for name in defines]
    lines += [f'printf("sizeof_{s} %zu\\n", sizeof(struct shmring_{s}));' for s in STRUCTS]
    program = "#include <stdio.h>\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    built = _cc(tmp_path, _layout_header.HEADER.parent, program)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(tmp_path / "probe")], capture_output=True, text=True, timeout=WAIT, check=True
    )
    output = ran.stdout
    printed = dict(line.split() for line in output.splitlines())
    derived = {"MAGIC_BYTES": len(L.MAGIC), "RECORD_BYTES": L.CACHE_LINE, "MAX_NAME": MAX_NAME}
    expected = {name: getattr(L, name) for name in defines if hasattr(L, name)} | derived
    assert set(expected) == set(defines)
    assert {name: int(printed[name]) for name in defines} == expected
    for struct_name, size in STRUCTS.items():
        assert int(printed[f"sizeof_{struct_name}"]) == size, struct_name


@needs_cc
def test_an_offset_that_disagrees_does_not_build(tmp_path: Path) -> None:
    text = _layout_header.HEADER.read_text()
    wrong = text.replace(
        "offsetof(struct shmring_control, frames) == 160",
        "offsetof(struct shmring_control, frames) == 168",
    )
    assert wrong != text
    (tmp_path / "shmring_layout.h").write_text(wrong)
    built = _cc(tmp_path, tmp_path, "int main(void) { return 0; }\n")
    assert built.returncode != 0 and "frames" in built.stderr
