# Smoke test of the benchmark suite (bench/): tiny counts, a few seconds, real processes.
#
# Rules: it proves the harness runs end to end — shmring and a stdlib peer deliver verified,
# lossless frames (and so does the zero-copy peer iceoryx2-loan, stamped in place, when
# installed), the limit and wake cells (a floor, a sleeping shmring reader) run, each topology
# (supervisor, latest frame, fan-in, groups, fan-out) runs at a tiny size with its
# verification, reports are written — and that nothing stays in /dev/shm. It needs no optional
# peer: one that is not installed must be reported as skipped with a reason (checked directly
# by hiding pyzmq). The full run stays out of `make test`.
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import analysis, report
from bench.__main__ import main as bench_main
from bench.cell import FAN_IN, GROUPS, LATEST_FRAME, THROUGHPUT, Cell, Timing
from bench.frames import PHASE_END, WRITER_SHIFT, make_source, parse_size, stamper
from bench.suite import SHAPES, available
from bench.verify import verdict, verifier

pytestmark = pytest.mark.slow  # a real, if short, benchmark run

ROOT = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
TRANSPORTS = (
    "shmring-write,mp-pipe,pyzmq,iceoryx2-loan,memcpy-hot,floor-pipe,shmring-sleep,"
    "shmring-write-alone,shmring-overwrite-alone,shmring-overwrite-lagging"
)
# Each topology: shmring and a stdlib peer; pyzmq-pubsub (optional) for a peer that drops.
TOPOLOGY_TRANSPORTS = "shmring-write,shmring-latest,textbook-latest,mp-queue,pyzmq-pubsub"
TOPOLOGIES = "supervisor,latest,fanin,groups,fanout"


def _ours(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith(("sb", "shmring.sb"))}  # bench names start "sb"


def test_quick_run_is_verified_lossless_and_leaves_nothing(tmp_path: Path) -> None:
    before = {p.name for p in SHM.iterdir()}
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--sizes",
            "64,4096",
            "--transports",
            TRANSPORTS,
            "--scenarios",
            "wake,main,limit,alone",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < 30, f"smoke run took {elapsed:.1f} s"

    results = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["scenario"], c["transport"], c["size"]): c for c in results["cells"]}
    expected = [
        ("main", name, size) for name in ("shmring-write", "mp-pipe") for size in ("64 B", "4 KiB")
    ]
    expected += [("limit", "memcpy-hot", "4 KiB")]
    expected += [
        ("alone", name, size)
        for name in ("shmring-write-alone", "shmring-overwrite-alone", "shmring-overwrite-lagging")
        for size in ("64 B", "4 KiB")
    ]
    for key in expected:
        _assert_verified(cells[key], "fps")
    main = cells[("main", "shmring-write", "64 B")]
    assert main["median"]["latency_p99_us"] >= main["median"]["latency_p50_us"] > 0
    assert main["median"]["idle_consumer_cores"] >= 0
    for floor_or_sleeper in ("floor-pipe", "shmring-sleep"):
        wake = cells[("wake", floor_or_sleeper, "24 B stamp")]
        assert wake["status"] == "ok" and wake["median"]["latency_p50_us"] > 0

    for optional in ("pyzmq", "iceoryx2-loan"):  # ran verified, or skipped with its reason
        ran = [c for c in results["cells"] if c["transport"] == optional]
        assert ran or optional in results["skipped"]
        for peer in ran:
            _assert_verified(peer, "fps")
    loan = cells.get(("main", "iceoryx2-loan", "64 B"))
    assert loan is None or loan["copies"] is False  # stamped in place: claim's peer

    by_size = {row["size"]: row for row in analysis.alone_ratios(results["cells"])}
    assert set(by_size) == {"64 B", "4 KiB"}
    for row in by_size.values():
        assert row["shmring-write-alone"] == 1.0  # the base
        assert row["shmring-overwrite-alone"] > 0 and row["shmring-overwrite-lagging"] > 0

    report = (tmp_path / "results.md").read_text()
    assert "shmring-write" in report and "Targets" in report
    assert "write() alone" in report
    assert "shmring ÷ best peer" in done.stdout
    assert not _ours({p.name for p in SHM.iterdir()} - before)


def _assert_verified(cell: dict[str, Any], rate: str) -> None:
    """The cell ran, measured a rate, and every run's frames passed verification."""
    assert cell["status"] == "ok", (cell["scenario"], cell["transport"], cell["reason"])
    assert cell["median"][rate] > 0
    for run in cell["runs"]:
        assert run["lost"] == run["dups"] == run["torn"] == 0
        if cell["scenario"] not in ("limit", "alone"):  # no consumer: the producer checks
            assert run["verified_frames"] > 0


def test_every_topology_runs_verified_at_a_tiny_size(tmp_path: Path) -> None:
    """Supervisor, latest frame, fan-in, groups and fan-out: shmring and a peer each run one
    verified cell (the latest-frame ring made with the natural call, default limits)."""
    before = {p.name for p in SHM.iterdir()}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--sizes",
            "64",
            "--transports",
            TOPOLOGY_TRANSPORTS,
            "--scenarios",
            TOPOLOGIES,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["scenario"], c["transport"]): c for c in results["cells"]}
    for key in [
        ("supervisor", "shmring-write"),
        ("fanin", "shmring-write"),
        ("fanin", "mp-queue"),
        ("groups", "shmring-write"),
        ("groups", "mp-queue"),
        ("fanout", "shmring-write"),
    ]:
        _assert_verified(cells[key], "fps")
    assert cells[("fanin", "shmring-write")]["producers"] == 2
    assert cells[("groups", "mp-queue")]["consumers"] == 2
    assert cells[("fanout", "shmring-write")]["consumers"] == 3
    _assert_verified(cells[("latest", "textbook-latest")], "write_fps")
    _assert_verified(cells[("latest", "shmring-latest")], "age_p50_us")
    report = (tmp_path / "results.md").read_text()
    pubsub = cells.get(("fanout", "pyzmq-pubsub"))
    assert pubsub or "pyzmq-pubsub" in results["skipped"]
    if pubsub:  # a peer that may drop: verified otherwise, its drops reported
        assert pubsub["status"] == "ok" and pubsub["median"]["dropped_pct"] >= 0
    for heading in ("## Supervisor", "## Latest frame", "## Fan-in", "## Groups", "## Fan-out"):
        assert heading in report
    for topology in TOPOLOGIES.split(","):
        assert f"{topology}: shmring ÷ best peer" in done.stdout
    assert not _ours({p.name for p in SHM.iterdir()} - before)


def test_missing_peer_is_skipped_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zmq", None)  # makes `import zmq` raise ImportError
    monkeypatch.delitem(sys.modules, "bench.transports.pyzmq", raising=False)
    ok, skipped = available(["mp-pipe", "pyzmq"])
    assert ok == ("mp-pipe",)
    assert "zmq" in skipped["pyzmq"]


def test_readme_run_refuses_to_publish_a_partial_comparison(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A --readme run with a peer that cannot run, or with part of the suite, would publish
    targets as 'not measured': it stops before measuring (nothing is measured or written
    here even if it did not) and says why and what to do."""
    import bench.__main__ as bench_cli

    def must_not_run(*args: object) -> None:
        raise AssertionError("a refused --readme run went on")

    monkeypatch.setattr(bench_cli, "_measure", must_not_run)
    monkeypatch.setattr(report, "write_docs", must_not_run)
    monkeypatch.setitem(sys.modules, "zmq", None)
    monkeypatch.delitem(sys.modules, "bench.transports.pyzmq", raising=False)
    out = ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as refused:
        bench_main(["--readme", *out])
    message = str(refused.value)
    assert "pyzmq (" in message and "zmq" in message
    assert "pip install -e '.[bench,async]'" in message
    with pytest.raises(SystemExit, match="without --transports"):
        bench_main(["--readme", "--transports", "mp-pipe", *out])
    earlier = tmp_path / "results.json"  # an earlier run that skipped a peer
    earlier.write_text(json.dumps({"skipped": {"pyzmq": "not installed"}, "cells": []}))
    with pytest.raises(SystemExit, match=r"pyzmq \(not installed\)"):
        bench_main(["--readme", "--from-json", str(earlier), *out])


def bench_stdout(module: str, *args: str, timeout: float = 60) -> str:
    """`python -m MODULE ARGS...` run from the checkout, which must exit 0: its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def test_cold_path_probe_runs_and_reports_every_row() -> None:
    """`python -m bench.coldpath` (the README's cold-cache figures) runs, with tiny counts,
    prints a cold and a warm figure per row, and leaves no ring behind."""
    out = bench_stdout("bench.coldpath", "--samples", "5")
    rows = [line for line in out.splitlines() if "µs cold" in line]
    assert len(rows) == 3, out
    assert all(float(row.split("µs cold")[0].split()[-1]) > 0 for row in rows)
    assert not [p for p in SHM.iterdir() if p.name.startswith("shmring.coldpath")]


def test_copy_probe_reports_the_threshold_and_every_buffer_count() -> None:
    """`python -m bench.copies` (docs/OPERATIONS.md, "Large frames") runs with a tiny frame
    and duration, prints glibc's threshold and one positive rate per buffer count, alone and
    with two processes copying at once, and unlinks its segment."""
    out = bench_stdout("bench.copies", "--size", "65536", "--seconds", "0.05")
    assert "x86_non_temporal_threshold: " in out
    rates = [line.split()[-1] for line in out.splitlines() if line.startswith("  ")]
    assert len(rates) == 3, out
    assert all(int(rate.replace(",", "")) > 0 for rate in rates)
    assert not [p for p in SHM.iterdir() if p.name.startswith("shmring-copies-")]
    out = bench_stdout("bench.copies", "--size", "65536", "--seconds", "0.05", "--copiers", "2")
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == ["each", "4", "8"], out
    for row in rows:  # the total, then each copier's rate in parentheses
        total, first, second = (int(n.strip("(),").replace(",", "")) for n in row[-3:])
        assert total > 0 and first > 0 and second > 0 and abs(total - first - second) <= 1, out
    assert not [p for p in SHM.iterdir() if p.name.startswith("shmring-copies-")]


def test_bridge_bench_runs_every_cell_it_is_given() -> None:
    """`python -m bench.bridge` with a tiny run: the bridge (four processes) and raw Zenoh
    each deliver every frame in order (the consumers check, or the cell fails), the table
    has their rows with positive rates and the ratio row is filled; pyzmq, of the bench
    extra, runs too if installed, and is skipped with its reason if not."""
    transports = ["shmring bridge", "raw zenoh put→sub", "pyzmq PUSH/PULL tcp"]
    out = bench_stdout(
        "bench.bridge",
        "--sizes",
        "64KiB",
        "--seconds",
        "0.1",
        "--transports",
        *transports,
        timeout=120,
    )
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 64KiB | ")]
    rates = {row[2].strip(): row[3].strip() for row in rows if not row[2].strip().endswith("×")}
    skipped = "# pyzmq PUSH/PULL tcp: skipped, zmq is not installed" in out
    assert set(rates) == set(transports[: 2 if skipped else 3]), out
    assert all(int(rate.replace(",", "")) > 0 for rate in rates.values()), rates
    ratios = [row for row in rows if row[2].strip().endswith("×")]
    assert len(ratios) == 1 and ratios[0][-2].strip().endswith("×"), out  # latency ÷ raw Zenoh
    assert not [p for p in SHM.iterdir() if p.name.endswith(".zenoh")]


def test_bridge_copy_probe_times_every_copy() -> None:
    """`python -m bench.bridge --copies` (docs/performance.md, "Bridge: what the binding's
    copies cost") prints one row per size with a positive time for each copy it names."""
    out = bench_stdout("bench.bridge", "--copies", "--sizes", "64KiB")
    rows = [line for line in out.splitlines() if line.startswith("| 64KiB |")]
    assert len(rows) == 1, out
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert all(float(cell.rstrip("×").replace(",", "")) > 0 for cell in cells[1:]), rows


def _consume(cell: Cell, seqs: list[int]) -> dict[str, Any]:
    """A consumer's report after it verified frames numbered `seqs` (then its PHASE_ENDs)."""
    stamp, frames = stamper(cell.size), []
    for seq in [*seqs, *[PHASE_END] * cell.ends_due]:
        frame = make_source(cell.size)
        stamp(frame, seq, 0)
        frames.append(frame)
    tally = verifier(cell)
    assert tally.take(iter(frames))
    return tally.report()


def test_verdict_catches_what_fan_in_and_groups_must_not_do() -> None:
    """Fan-in: each writer's frames complete and in order; groups: each frame exactly once
    across the readers. The checks accept the right streams and name each violation."""
    size = parse_size("64")

    def cell(topology: str) -> Cell:
        producers, consumers = SHAPES[topology]
        return Cell("x", size, consumers, (THROUGHPUT,), Timing(), "t", False, topology, producers)

    fan_in, groups = cell(FAN_IN), cell(GROUPS)
    second = 1 << WRITER_SHIFT
    sent = [{"sent": 3}, {"sent": 3}]
    interleaved = [0, second, 1, second + 1, second + 2, 2]
    assert verdict(fan_in, False, sent, [_consume(fan_in, interleaved)])[0] is None
    swapped = [0, second + 1, second, 1, 2, second + 2]  # writer 1's frames out of order
    reason, counts = verdict(fan_in, False, sent, [_consume(fan_in, swapped)])
    assert reason and counts["dups"] == 1
    shares = [_consume(groups, [0, 2, 3]), _consume(groups, [1, 4])]
    assert verdict(groups, False, [{"sent": 5}], shares)[0] is None
    twice = [_consume(groups, [0, 2, 3]), _consume(groups, [1, 3])]  # 3 twice, 4 never
    assert verdict(groups, False, [{"sent": 5}], twice)[0]


def test_groups_verdict_refuses_shares_whose_counts_and_sums_match() -> None:
    """6 frames, shares {0, 1, 4} and {1, 4, 5}: 3 + 3 frames, 5 + 10 = 0 + 1 + ... + 5, yet
    2 and 3 were lost and 1 and 4 taken twice. The verdict compares the sets the readers
    took, so it refuses these and accepts a true split."""
    size = parse_size("64")
    groups = Cell("x", size, 2, (THROUGHPUT,), Timing(), "t", False, GROUPS, 1)
    sent = [{"sent": 6}]
    wrong = [_consume(groups, [0, 1, 4]), _consume(groups, [1, 4, 5])]
    reason, counts = verdict(groups, False, sent, wrong)
    assert reason and counts["lost"] == 2 and counts["dups"] == 2
    split = [_consume(groups, [0, 1, 4]), _consume(groups, [2, 3, 5])]
    assert verdict(groups, False, sent, split) == (
        None,
        {"lost": 0, "dups": 0, "torn": 0, "dropped": 0},
    )
    past = [_consume(groups, [0, 1, 4]), _consume(groups, [2, 3, 5, 6])]  # 6 was never sent
    assert verdict(groups, False, sent, past)[1]["dups"] == 1


def test_targets_judge_only_undisturbed_like_for_like_figures() -> None:
    """A target resting on a cell whose median includes disturbed runs (`~`) is not judged;
    fan-in's copy limit is memcpy-hot for each of its two writers; a latest-frame peer whose
    writer discards frames (pyzmq-conflate) is not ranked on its writer rate."""

    def cell(scenario: str, transport: str, key: str, value: float, **extra: Any) -> dict[str, Any]:
        kind = {"shmring": "shmring", "memcpy": "limit"}.get(transport.split("-")[0], "peer")
        return {
            "scenario": scenario, "transport": transport, "size": "64 B", "nbytes": 64,
            "kind": kind, "status": "ok", "median": {key: value}, "drops": False,
            "noisy": False, "producers": 2 if scenario == FAN_IN else 1, **extra,
        }  # fmt: skip

    def fan_in(**hot: Any) -> dict[str, Any]:
        cells = [
            cell(FAN_IN, "shmring-write", "fps", 1e6),
            cell(FAN_IN, "pyzmq", "fps", 1.2e6),
            cell("limit", "memcpy-hot", "fps", 1e6, **hot),
        ]
        (target,) = [t for t in analysis.targets(cells) if t["target"].startswith("fanin:")]
        return target

    judged = fan_in()  # >= 0.95x one writer's copy limit, not two writers'
    assert judged["met"] is False and "memcpy-hot ×2 (2 writers) 2M" in judged["detail"]
    unjudged = fan_in(noisy=True)
    assert unjudged["met"] is None and "memcpy-hot 64 B" in unjudged["detail"]
    assert "not judged (disturbed run)" in report._result(unjudged)

    latest = [
        cell(LATEST_FRAME, "shmring-latest", "write_fps", 2e6),
        cell(LATEST_FRAME, "iceoryx2-latest", "write_fps", 6e5),
        cell(LATEST_FRAME, "pyzmq-conflate", "write_fps", 5e6, writes_reach_reader=False),
    ]
    (row,) = analysis.ratios(latest, LATEST_FRAME)
    assert row["best_peer"] == "iceoryx2-latest"
    del latest[2]["writes_reach_reader"]  # a results.json from before the field
    assert analysis.ratios(latest, LATEST_FRAME)[0]["best_peer"] == "iceoryx2-latest"


def test_claim_ranks_against_zero_copy_peers_and_write_against_copying_ones() -> None:
    """write copies every frame, so it ranks against the peers that copy; claim writes its slot
    in place, so it ranks against the zero-copy peers only (iceoryx2-loan), with no copy limit;
    with no zero-copy peer its target is not measured. A results.json from before `copies`
    holds copying peers only."""

    def cell(scenario: str, transport: str, fps: float, **extra: Any) -> dict[str, Any]:
        kind = {"shmring": "shmring", "memcpy": "limit"}.get(transport.split("-")[0], "peer")
        return {
            "scenario": scenario, "transport": transport, "size": "64 B", "nbytes": 64,
            "kind": kind, "status": "ok", "median": {"fps": fps}, "drops": False,
            "noisy": False, "producers": 1, "copies": transport != "iceoryx2-loan", **extra,
        }  # fmt: skip

    cells = [
        cell("main", "shmring-write", 2e6),
        cell("main", "shmring-claim", 1e6),
        cell("main", "iceoryx2-event", 4e5),
        cell("main", "iceoryx2-loan", 8e5),  # faster than any copying peer: not write's peer
        cell("main", "mp-pipe", 1e5),
        cell("limit", "memcpy-hot", 3e6),
        cell("fanout", "shmring-claim", 1e5),  # no zero-copy peer ran in fan-out
        cell("fanout", "iceoryx2-event", 5e4),
    ]
    (row,) = analysis.ratios(cells)
    assert (row["best_peer"], row["best_peer_fps"]) == ("iceoryx2-event", 4e5)
    assert (row["best_zero_copy_peer"], row["best_zero_copy_peer_fps"]) == ("iceoryx2-loan", 8e5)
    assert row["shmring-write_per_best_peer"] == 5.0  # ÷ iceoryx2-event
    assert row["shmring-claim_per_best_peer"] == 1.25  # ÷ iceoryx2-loan
    assert "shmring-claim_per_copy_limit" not in row  # claim copies nothing: no copy limit

    judged = {t["target"]: t for t in analysis.targets(cells)}
    write = judged["main: shmring-write frames/s at 64 B >= min(1.1x best peer, 0.95x memcpy)"]
    assert write["met"] is True and write["need"] == pytest.approx(1.1 * 4e5)
    claim = judged["main: shmring-claim frames/s at 64 B >= 1.1x best zero-copy peer"]
    assert claim["met"] is True and claim["need"] == pytest.approx(1.1 * 8e5)
    assert "iceoryx2-loan 800k" in claim["detail"] and "memcpy" not in claim["detail"]
    fanout = judged["fanout: shmring-claim frames/s at 64 B >= 1.1x best zero-copy peer"]
    assert fanout["met"] is None and "best zero-copy peer —" in fanout["detail"]
    cells[3]["median"]["fps"] = 9.5e5  # claim now below 1.1x its zero-copy peer
    (claim,) = [t for t in analysis.targets(cells) if t["target"] == claim["target"]]
    assert claim["met"] is False

    table = "\n".join(report._ratio_table(cells, "main"))
    assert "| best zero-copy peer (frames/s) | claim |" in table
    assert "| iceoryx2-loan 950k | 1M: 1.05× peer |" in table
    summary = report.console_summary({"cells": cells}).splitlines()
    in_main, in_fanout = [line for line in summary if "shmring-claim" in line and "/s = " in line]
    assert in_main.endswith("1M/s = 1.05× best zero-copy peer (iceoryx2-loan 950k)")
    assert in_fanout.endswith("100k/s = — best zero-copy peer (—)")

    old = [{k: v for k, v in c.items() if k != "copies"} for c in cells]  # before the field
    (row,) = analysis.ratios(old)
    assert row["best_peer"] == "iceoryx2-loan" and row["best_zero_copy_peer"] is None


def test_frame_sizes_are_read_as_the_tables_label_them() -> None:
    """`--sizes` takes what the tables print (64 B, 64 KiB, 640×480×3) and plain bytes, and
    refuses anything else by name."""
    assert parse_size("64KiB") == parse_size("65536") == parse_size("64 KiB")
    assert parse_size("64 KiB").label == "64 KiB"
    assert parse_size("1MiB").shape == (1 << 20,)
    assert parse_size("64 B").shape == (64,)
    assert parse_size("640×480×3").shape == (480, 640, 3)
    with pytest.raises(ValueError, match="bad frame size '64QB'"):
        parse_size("64QB")


def test_overwrite_writers_probe_checks_frames_and_reports_each_count() -> None:
    """`python -m bench.overwrite_writers` (docs/performance.md, "Several writers of an
    overwrite ring") runs 1 and 2 writer processes with a checking reader, prints a
    positive rate for each and their ratio, and leaves no ring behind."""
    out = bench_stdout(
        "bench.overwrite_writers", "--sizes", "64", "--seconds", "0.2", "--repeats", "1"
    )
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["64"]]
    written = {int(row[1]): float(row[2].replace(",", "")) for row in rows if len(row) == 5}
    assert set(written) == {1, 2} and all(rate > 0 for rate in written.values()), out
    assert "2 writers ÷ 1: " in out
    assert not [p for p in SHM.iterdir() if p.name.startswith("shmring.bench-ow-")]


def test_a_failed_peer_leaves_a_target_unjudged_unless_the_copy_limit_decides() -> None:
    """The best peer is unknown when a peer's cell failed: a target that depends on it is
    not judged, rather than judged against the next peer down; one met through the copy
    limit (which does not depend on peers) still is."""

    def cell(kind: str, transport: str, fps: float, status: str = "ok") -> dict[str, Any]:
        return {
            "scenario": "limit" if kind == "limit" else "main", "size": "64 B", "nbytes": 64,
            "kind": kind, "transport": transport, "status": status, "median": {"fps": fps},
            "drops": False,
        }  # fmt: skip

    def verdict(shmring_fps: float) -> dict[str, Any]:
        cells = [
            cell("shmring", "shmring-write", shmring_fps),
            cell("peer", "iceoryx2-event", 900e3, status="failed"),
            cell("peer", "pyzmq", 300e3),
            cell("limit", "memcpy-hot", 1e6),
        ]
        (target,) = [
            t for t in analysis.targets(cells) if t["target"].startswith("main: shmring-write")
        ]
        return target

    unjudged = verdict(500e3)  # 1.67x pyzmq, but the failed peer may have been best
    assert unjudged["met"] is None and "iceoryx2-event failed" in unjudged["detail"]
    assert verdict(960e3)["met"] is True  # >= 0.95x memcpy-hot: met whatever the peers


def test_bridge_bench_frames_are_checked_head_and_tail() -> None:
    """bench.bridge's frames carry their index at both ends, over a pattern that touches
    every page (not the kernel's zero page); a frame whose ends disagree is torn."""
    from bench import bridge
    from bench.frames import FrameSize

    frame = make_source(FrameSize("t", (4096,)))
    bridge.stamp(frame, 7)
    assert bridge.unstamp(frame.tobytes())[0] == 7
    assert frame[16:-8].all()  # the pattern, no zero bytes
    torn = frame.copy()
    torn[-8:] = np.array([8], np.uint64).view(np.uint8)
    with pytest.raises(AssertionError, match="torn"):
        bridge.unstamp(torn.tobytes())
