# End-to-end tests of `python -m shmring.demo_camera`: the real command, real stage processes,
# real shared memory, real OpenCV encoding and decoding.
#
# Rules: every run is bounded (frame counts, subprocess timeouts, deadlines on every read of
# the demo's output); nothing waits by sleeping. Each test checks that no segment of its run
# is left in /dev/shm: ring names carry the supervisor's pid ("cam<pid>-<channel>").

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import end_started, readline_within

pytestmark = pytest.mark.slow  # the six-process demo, end to end

cv2 = pytest.importorskip("cv2", reason="the demo needs OpenCV: pip install -e '.[demo]'")

RUN_TIMEOUT_S = 60
# The supervisor prints "  1.0 s | capture 30.0 fps | ..." about once a second once frames flow.
FIRST_PROGRESS_LINE = r"^\s*\d+\.\d s \| capture"
PIPELINE_STAGES = {"capture", "edges", "stats0", "stats1", "recorder", "display"}


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _end_started_processes() -> Iterator[None]:
    """Each process a test started (start_demo, start) is killed and reaped after it,
    if a failed step left it running. (A demo's stages stop once their supervisor is gone.)"""
    yield
    end_started(_STARTED, RUN_TIMEOUT_S)


def start_demo(out_dir: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "shmring.demo_camera", "--headless", "--out", str(out_dir)]
    return start([*command, *args], cwd=out_dir.parent)


def start(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    """`command`, its output (stdout and stderr) read through a pipe, unbuffered whatever
    this run's environment says: the tests wait for lines printed without flush=True."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    _STARTED.append(process)
    return process


def finish(demo: subprocess.Popen[str], timeout: float = RUN_TIMEOUT_S) -> str:
    try:
        output, _ = demo.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        demo.kill()
        output, _ = demo.communicate()
        pytest.fail(f"the demo did not end within {timeout} s:\n{output}")
    return output


def read_until(demo: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """The demo's output up to the first line matching `pattern`, read from the pipe's
    descriptor (readline_within): a buffered readline could take several lines at once,
    which select() would then not see."""
    assert demo.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = readline_within(demo.stdout, left)
        except AssertionError:  # nothing more within the time left
            break
        if not line:
            break  # the demo ended
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    demo.kill()
    pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{''.join(seen)}")


def number_after(text: str, words: str) -> int:
    """The integer printed right after `words` in `text` (e.g. 'captured 40 frames')."""
    found = re.search(rf"{words} (\d+)", text)
    assert found, f"{words!r} not in:\n{text}"
    return int(found.group(1))


def leftover_segments(demo: subprocess.Popen[str]) -> list[str]:
    return glob.glob(f"/dev/shm/*cam{demo.pid}-*")


def load_summary(out_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out_dir / "summary.json").read_text())
    return summary


def frames(summary: dict[str, Any], stage: str) -> int:
    count: int = summary["stages"][stage]["frames"]
    return count


def decode_video(path: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(path)
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    capture.release()
    return decoded


def check_complete_run(summary: dict[str, Any], captured: int, size: tuple[int, int]) -> None:
    """Every frame captured went through edges, one stats worker, and into the MP4; the
    display saw a fresh subset; the MP4 and contact sheet have the right geometry."""
    width, height = size
    assert summary["frame_shape"] == [height, width, 3]
    assert set(summary["stages"]) == PIPELINE_STAGES
    for stage in summary["stages"].values():
        assert stage["exit_code"] == 0, stage
        assert stage["dropped"] == 0 or stage is summary["stages"]["display"], stage
    assert frames(summary, "capture") == captured
    assert frames(summary, "edges") == captured
    # The worker group: each frame went to exactly one of the two stats workers.
    assert frames(summary, "stats0") + frames(summary, "stats1") == captured
    assert frames(summary, "recorder") == captured
    display = summary["stages"]["display"]
    assert 1 <= display["frames"] <= captured
    assert display["frames"] + display["dropped"] <= captured
    if summary["transport"] == "shm":
        # Overwrite rings count exactly what a reader missed; a queue can lose the last one.
        assert display["frames"] + display["dropped"] == captured

    video = decode_video(summary["outputs"]["video"])
    assert len(video) == captured
    assert video[0].shape == (height, width, 3)
    assert np.abs(video[0].astype(int) - video[-1].astype(int)).mean() > 1, "nothing moved"

    sheet = cv2.imread(summary["outputs"]["contact_sheet"])
    assert sheet is not None
    thumb_width = min(width, 320)
    assert sheet.shape == (2 * round(height * thumb_width / width), 3 * thumb_width, 3)


@pytest.mark.parametrize("transport", ["shm", "queue"])
def test_synthetic_source_headless(tmp_path: Path, transport: str) -> None:
    missing = tmp_path / "no-such-video.mp4"
    out_dir = tmp_path / "out"
    demo = start_demo(
        out_dir,
        *("--source", str(missing), "--size", "320x240", "--fps", "0", "--frames", "40"),
        *("--transport", transport),
    )
    output = finish(demo)

    assert demo.returncode == 0, output
    assert output.count("did not open; using the synthetic 320x240 pattern") == 1, output
    summary = load_summary(out_dir)
    assert summary["transport"] == transport
    assert summary["reason"] == "capture: --frames 40 reached"
    check_complete_run(summary, 40, (320, 240))
    assert leftover_segments(demo) == []


def write_video(path: Path, count: int, size: tuple[int, int]) -> None:
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, size)
    assert writer.isOpened()
    for index in range(count):
        image = np.full((height, width, 3), 40, np.uint8)
        left = index * 6
        cv2.rectangle(image, (left, 40), (left + 50, 120), (0, 0, 255), cv2.FILLED)
        writer.write(image)
    writer.release()


def test_video_file_source_ends_at_end_of_file(tmp_path: Path) -> None:
    video = tmp_path / "input.mp4"
    write_video(video, 30, (256, 192))
    out_dir = tmp_path / "out"
    # --size is the synthetic pattern's; a real source's first frame sets the rings' shape.
    demo = start_demo(out_dir, "--source", str(video), "--fps", "0", "--size", "640x480")
    output = finish(demo)

    assert demo.returncode == 0, output
    assert "synthetic" not in output
    summary = load_summary(out_dir)
    assert summary["source"] == str(video)
    assert summary["reason"] == "capture: end of video"
    check_complete_run(summary, 30, (256, 192))
    assert leftover_segments(demo) == []


def test_sigkill_of_a_stage_stops_the_others_cleanly(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    demo = start_demo(out_dir, "--source", "synthetic", "--size", "320x240", "--seconds", "60")
    started = read_until(demo, FIRST_PROGRESS_LINE, timeout=30)
    edges_pid = number_after(started, r"started edges \(pid")
    segments_while_running = leftover_segments(demo)

    killed_at = time.monotonic()
    os.kill(edges_pid, signal.SIGKILL)
    output = started + finish(demo, timeout=10)
    ended_after_s = time.monotonic() - killed_at

    assert len(segments_while_running) == 4, segments_while_running
    assert demo.returncode == 1, output
    assert ended_after_s < 4, output  # 2 s for the stages, the rest for the summary
    summary = load_summary(out_dir)
    assert summary["reason"] == "stage edges was killed by SIGKILL"
    for name, stage in summary["stages"].items():
        if name == "edges":
            assert stage["exit_code"] == -signal.SIGKILL
            continue
        assert stage["exit_code"] == 0, (name, stage)
        assert not stage["killed_after_grace"], (name, stage)
        assert stage["exited_after_shutdown_s"] < 2.0, (name, stage)
    # edges created the `processed` ring and could not unlink it: its last reader or, failing
    # that, the supervisor did.
    assert set(summary["removed_leftovers"]) <= {f"cam{demo.pid}-processed"}
    assert leftover_segments(demo) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_demo_drains_and_exits(tmp_path: Path, signum: signal.Signals) -> None:
    out_dir = tmp_path / "out"
    demo = start_demo(out_dir, "--source", "synthetic", "--size", "320x240", "--seconds", "60")
    read_until(demo, FIRST_PROGRESS_LINE, timeout=30)
    demo.send_signal(signum)
    output = finish(demo, timeout=10)

    assert demo.returncode == 128 + signum, output
    assert f"stopping: {signum.name} received" in output
    summary = load_summary(out_dir)
    for name, stage in summary["stages"].items():
        assert stage["exit_code"] == 0, stage
        assert stage["exited_after_shutdown_s"] < 2.0, stage
        # A signal stops capture only; the rest drain to the end of their streams.
        assert stage["reason"] == ("asked to stop" if name == "capture" else "end of stream")
    # So the stop is orderly: what was captured is still recorded, and the MP4 is complete.
    captured = frames(summary, "capture")
    assert frames(summary, "recorder") == captured
    assert len(decode_video(summary["outputs"]["video"])) == captured
    assert leftover_segments(demo) == []


def test_example_scripts_find_each_other_by_name(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[1] / "examples" / "camera_pipeline"
    ring = f"ex{os.getpid()}"
    sheet = tmp_path / "sheet.png"

    def script(name: str, *args: str) -> subprocess.Popen[str]:
        return start([sys.executable, str(examples / name), *args], cwd=tmp_path)

    # Readers first: they wait for their rings to appear by name.
    display = script("display.py", "--ring", f"{ring}-edges", "--headless", "--out", str(sheet))
    process = script("process.py", "--input", ring, "--output", f"{ring}-edges")
    read_until(display, "waiting for ring", timeout=30)
    read_until(process, "waiting for ring", timeout=30)
    capture = script(
        "capture.py", "--ring", ring, "--source", "synthetic", "--size", "320x240", "--seconds", "1"
    )
    captured_output = finish(capture, timeout=30)
    # Capture closing its ring ends the others: end of stream flows down the pipeline.
    processed_output, shown_output = finish(process, timeout=15), finish(display, timeout=15)

    assert capture.returncode == process.returncode == display.returncode == 0
    captured = number_after(captured_output, "captured")
    processed = number_after(processed_output, "processed")
    shown = number_after(shown_output, "showed")
    assert "end of stream" in processed_output and "end of stream" in shown_output
    # Readers that attach after capture started begin with its newest frame.
    assert 1 <= shown <= processed <= captured
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape == (480, 960, 3)
    assert glob.glob(f"/dev/shm/*{ring}*") == []


def test_without_opencv_the_command_says_what_to_install() -> None:
    code = (
        "import runpy, sys; sys.modules['cv2'] = None; sys.argv[1:] = ['--help']; "
        "runpy.run_module('shmring.demo_camera', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'shmring[demo]'" in proc.stderr, proc.stderr
