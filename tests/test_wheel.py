# The manylinux wheel (`make wheel`) installs and streams on a machine without a C compiler.
#
# Theory: a fresh venv (no pip of its own, no site-packages of ours) gets the wheel from
# dist/ installed by this venv's pip, under a PATH holding only the new venv's bin/: no cc,
# no gcc, so nothing can be compiled, and pip is told to take wheels only. A writer and a
# reader, two processes of the new venv, then stream frames through it; the reader checks
# every frame, that the shmring it imported is the installed one with its C extension, and
# that no compiler was on its PATH. The layout header the wheel ships for C programs
# (shmring_layout.h) must be the one its _layout.py generates.
#
# Rules: the wheel in dist/ is reused when it is newer than every source it is built from,
# else `make wheel` builds it (~10 s). pip uses its usual cache, so numpy comes from there
# after the first run. Every subprocess has a timeout.

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import WAIT, unique_name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
SOURCES = ("src", "pyproject.toml", "setup.py", "README.md")
FRAMES = 200
SHAPE = (64, 64)
PIP = (sys.executable, "-m", "pip")  # this venv's pip installs into the new one
WHEELS_ONLY = ("--only-binary", ":all:")  # nothing may be built from source

WRITER = """
import sys
import numpy as np
import shmring
name, count = sys.argv[1], int(sys.argv[2])
with shmring.RingWriter.create(name, {shape}, np.uint8, slots=4) as writer:
    writer.wait_for_readers(1, timeout={wait})
    for i in range(count):
        writer.write(np.full({shape}, i % 251, np.uint8), timeout={wait})
"""

READER = """
import json, shutil, sys
import shmring, shmring._fastpath
seen = []
with shmring.RingReader.attach(sys.argv[1], timeout={wait}) as reader:
    for frame in reader:
        first = int(frame.array.flat[0])
        assert (frame.array == first).all(), f"frame {{frame.seq}} is torn"
        seen.append(first)
print(json.dumps({{
    "seen": seen,
    "module": shmring.__file__,
    "extension": shmring._fastpath.__file__,
    "compilers": [shutil.which(cc) for cc in ("cc", "gcc")],
}}))
"""


def newest_source_mtime() -> float:
    paths = [ROOT / name for name in SOURCES]
    files = [p for path in paths for p in ([path] if path.is_file() else path.rglob("*"))]
    return max(f.stat().st_mtime for f in files if f.is_file() and "__pycache__" not in f.parts)


def fresh_wheel() -> Path | None:
    """The manylinux wheel for this Python in dist/, if it is newer than its sources."""
    tag = sysconfig.get_config_var("SOABI").split("-")[1]  # "cpython-311-..." -> "311"
    wheels = sorted(DIST.glob(f"shmring-*-cp{tag}-cp{tag}-*manylinux*.whl"), key=os.path.getmtime)
    if wheels and wheels[-1].stat().st_mtime > newest_source_mtime():
        return wheels[-1]
    return None


def built_wheel() -> Path:
    wheel = fresh_wheel()
    if wheel is None:
        bin_dir = os.path.dirname(sys.executable)  # this venv's build and auditwheel
        subprocess.run(
            ["make", "-C", str(ROOT), "wheel", f"BIN={bin_dir}"], check=True, timeout=300
        )
        wheel = fresh_wheel()
    assert wheel is not None, f"make wheel left no fresh manylinux wheel in {DIST}"
    return wheel


def test_the_wheel_streams_where_there_is_no_compiler(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="make wheel needs the `wheel` extra")
    pytest.importorskip("auditwheel", reason="make wheel needs the `wheel` extra")
    wheel = built_wheel()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(venv / "bin")  # no cc, no gcc
    subprocess.run(
        [*PIP, "--python", python, "install", "--quiet", *WHEELS_ONLY, str(wheel)],
        check=True,
        env=env,
        timeout=120,
    )

    name = unique_name("whl")
    code = {"shape": SHAPE, "wait": WAIT}
    reader = subprocess.Popen(
        [python, "-c", READER.format(**code), name],
        cwd=tmp_path,  # not the checkout: nothing of src/ is importable from here
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        subprocess.run(
            [python, "-c", WRITER.format(**code), name, str(FRAMES)],
            cwd=tmp_path,
            env=env,
            check=True,
            timeout=WAIT,
        )
        out, _ = reader.communicate(timeout=WAIT)
    finally:
        reader.kill()
        reader.wait()
    assert reader.returncode == 0, out
    report = json.loads(out)
    assert report["compilers"] == [None, None]
    assert report["module"].startswith(str(venv)), report["module"]
    assert report["extension"].startswith(str(venv)) and report["extension"].endswith(".so")
    assert report["seen"] == [i % 251 for i in range(FRAMES)]
    # The wheel carries the layout header for C programs, current with its _layout.py.
    checked = subprocess.run(
        [python, "-m", "shmring._layout_header", "--check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert checked.returncode == 0, checked.stderr
