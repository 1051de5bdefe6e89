# Results -> JSON, markdown tables (one section per topology), the console summary.
#
# Rules: everything shown is computed from the cells of one run (never from older runs); a cell
# that failed shows as FAILED in its table and with its reason under "Failed cells", a skipped
# transport is listed with its reason, and a median taken over disturbed runs is marked "~".
# Figures, ratios and targets come from analysis.py, plots from plots.py (matplotlib is optional,
# the `bench` extra: without it the plots are skipped and the report says so).
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import async_reader
from bench.analysis import (
    SLEEP,
    WRITE_ALONE,
    ZERO_COPY,
    Cells,
    alone_ratios,
    copy_limit_label,
    find,
    fmt_peer,
    fmt_rate,
    fmt_us,
    noisy,
    peer_key,
    peer_label,
    ratios,
    reaches_reader,
    sizes,
    targets,
    transports,
    unranked,
    zero_copy_peers,
)
from bench.cell import (
    ALONE,
    FAN_IN,
    FAN_OUT,
    GROUPS,
    LATEST_FRAME,
    MAIN,
    SUPERVISOR,
    TITLES,
    TOPOLOGIES,
    Timing,
)
from bench.plots import plots
from bench.suite import SCENARIOS

DEFAULTS = Timing()  # the pacing of a run whose results do not say

HOW = {  # topology: how it is wired and what its figures are
    SUPERVISOR: "The parent process (the harness) creates the channel and holds it, never "
    "writing, until the run is over; a writer child and a reader child attach. shmring: "
    "`RingWriter.create` in the parent, `RingWriter.attach` in the writer. `textbook-ring` and "
    "`faster-fifo` are always made by the parent (their main cells run the same program); "
    "iceoryx2: the parent's node creates the service, each child has its own node. "
    "Frames/s · GB/s; CPU in cores, writer / reader.",
    LATEST_FRAME: "The writer runs flat out (it never waits); the reader takes the newest "
    "frame, works 1 ms holding it, and checks it did not change meanwhile. shmring: "
    '`RingWriter.create(name, shape, dtype, policy="overwrite", slots=4)` (default '
    "max_readers / max_writers) and `latest()`; iceoryx2: safe overflow, subscriber buffer of 1, "
    "event wait; pyzmq: PUB/SUB with `CONFLATE`; `textbook-latest`: one slot and a "
    "`multiprocessing.Condition`, the reader copying the frame out under the lock. write = "
    "writer frames/s, read = distinct frames/s the reader got, age = staleness p50 / p99 (from "
    "the stamp to the reader getting the frame); CPU writer / reader.",
    FAN_IN: "Two writer processes, one reader; every frame of each writer delivered, in order "
    "(checked per writer). shmring: the parent creates the ring, both writers attach; pyzmq: "
    "PUSH/PULL, the PULL binds. Frames/s = all frames the reader got; CPU both writers / reader.",
    GROUPS: "One writer, two readers sharing the work: each frame reaches exactly one reader "
    "(each share in order; each reader marks the sequence numbers it took, and the shares must "
    "be disjoint and together every frame sent). shmring: both readers attach with `group=`. "
    "Frames/s = both readers together; CPU writer / both readers.",
    FAN_OUT: "One writer, three readers, each sees every frame. Frames/s = per reader (the "
    "slowest one); CPU writer / all readers. `pyzmq-pubsub` drops a subscriber's frames while it "
    "lags (PUB/SUB by design): its frames/s counts frames delivered, dropped % is of the frames "
    "sent to every reader.",
}


UNRANKED = "†"  # marks a writer rate shown but not ranked (analysis.unranked)

# ---- formatting ----


def _cores(cores: float | None) -> str:
    return "—" if cores is None else f"{cores:.2f}"


def _cell_text(cell: dict[str, Any] | None, text: str) -> str:
    if cell is None:
        return "·"
    if cell["status"] != "ok":
        return "FAILED"
    return text + ("~" if noisy(cell) else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _grid(cells: Cells, scenario: str, render: Callable[[dict[str, Any]], str]) -> list[str]:
    """Transports x sizes; render() gets the whole cell (its median, runs, flags)."""
    labels = sizes(cells, scenario)
    rows = []
    for name in transports(cells, scenario):
        row = [f"`{name}`"]
        for size in labels:
            cell = find(cells, scenario, name, size)
            row.append(_cell_text(cell, render(cell) if cell else ""))
        rows.append(row)
    return _table(["transport", *labels], rows)


def _throughput(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return f"{fmt_rate(m.get('fps'))} · {m.get('gbps', 0):.2f} GB/s"


def _latency(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return f"{fmt_us(m.get('latency_p50_us'))} / {fmt_us(m.get('latency_p99_us'))}"


def _latest(cell: dict[str, Any]) -> str:
    m = cell["median"]
    mark = "" if reaches_reader(cell) else UNRANKED
    return (
        f"write {fmt_rate(m.get('write_fps'))}/s{mark}, read {fmt_rate(m.get('read_fps'))}/s, "
        f"age {fmt_us(m.get('age_p50_us'))} / {fmt_us(m.get('age_p99_us'))}"
    )


def _cpu(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return f"{_cores(m.get('producer_cores'))} / {_cores(m.get('consumer_cores'))}"


def _with_cpu(cell: dict[str, Any]) -> str:
    """A topology's cell: its figures, then the CPU (and the drops of a dropping peer)."""
    main = _latest(cell) if cell["scenario"] == LATEST_FRAME else _throughput(cell)
    dropped = cell["median"].get("dropped_pct")
    drops = "" if dropped is None else f"; dropped {dropped:.1f}%"
    return f"{main}; {_cpu(cell)} cores{drops}"


def _ratio_table(cells: Cells, scenario: str) -> list[str]:
    """Per size: the best copying peer, the copy limit and each rated shmring way that copies ÷
    both; then the best zero-copy peer and each way that copies nothing (claim) ÷ it."""
    rows = ratios(cells, scenario)
    rated = list(dict.fromkeys(n for row in rows for n in row["rated"]))
    copying = [n for n in rated if n not in ZERO_COPY]
    in_place = [n for n in rated if n in ZERO_COPY]
    lines = []
    for row in rows:
        line = [row["size"], _best_peer(row, "peer"), fmt_rate(row["copy_limit_fps"])]
        line += [
            f"{fmt_rate(row.get(f'{n}_fps'))}: {_x(row.get(f'{n}_per_best_peer'))} peer, "
            f"{_x(row.get(f'{n}_per_copy_limit'))} memcpy"
            for n in copying
        ]
        if in_place:
            line.append(_best_peer(row, peer_key(in_place[0])))
            line += [
                f"{fmt_rate(row.get(f'{n}_fps'))}: {_x(row.get(f'{n}_per_best_peer'))} peer"
                for n in in_place
            ]
        if scenario == LATEST_FRAME:
            line += [
                f"{row['age_peer'] or '—'} {fmt_us(row['age_peer_us'])}",
                f"{fmt_us(row['age_us'])}: {_x(row['age_per_peer'])} peer",
            ]
        lines.append(line)
    what = "writer frames/s" if scenario == LATEST_FRAME else "frames/s"
    limit = copy_limit_label(rows[0]["writers"] if rows else 1)
    header = ["size", f"best peer ({what})", limit, *(n.split("-", 1)[1] for n in copying)]
    if in_place:
        header += [f"best {peer_label(in_place[0])} ({what})"]
        header += [n.split("-", 1)[1] for n in in_place]
    if scenario == LATEST_FRAME:
        header += ["best peer (staleness p50)", "shmring staleness p50"]
    return _table(header, lines)


def _best_peer(row: dict[str, Any], job: str) -> str:
    """A ratios() row's best peer of a job (analysis.peer_key): its name and figure."""
    return fmt_peer(row[f"best_{job}"], row[f"best_{job}_fps"])


def _in_place_note(cells: Cells, scenario: str) -> list[str]:
    """The footnote naming the peers of `scenario` that write frames in place, like claim."""
    peers = zero_copy_peers(cells, scenario)
    if not peers:
        return []
    names = ", ".join(f"`{n}`" for n in peers)
    return [
        f"{names}: zero copies, like `shmring-claim`: the producer writes only the frame's "
        "stamp (sequence number and time in its head, sequence number in its tail) into a "
        "loaned sample, in place, and sends it, so its GB/s is bytes made available too. It "
        "ranks against claim (best zero-copy peer), not against write.",
        "",
    ]


def _topology(cells: Cells, topology: str, images: dict[str, str]) -> list[str]:
    lines = [f"## {TITLES[topology]}", "", HOW[topology], ""]
    if topology in images:
        lines += [f"![{topology}]({images[topology]})", ""]
    lines += _grid(cells, topology, _with_cpu)
    lines += _in_place_note(cells, topology)
    if hidden := unranked(cells, topology):
        names = ", ".join(f"`{n}`" for n in hidden)
        lines += [
            f"{UNRANKED} {names}: writer frames/s shown, not ranked. Its send() returns once "
            "the frame is in the writer's own queue, which keeps only the newest (ZeroMQ "
            "`CONFLATE`), so most frames it counts as written never leave the writer's "
            "process; the other writers count only frames the reader could take. Its read "
            "rate and staleness are measured like the others', and it ranks on staleness.",
            "",
        ]
    lines += ["shmring ÷ best peer and ÷ memcpy limit (same run):", ""]
    return lines + _ratio_table(cells, topology)


def markdown(results: dict[str, Any], images: dict[str, str]) -> str:
    cells: Cells = results["cells"]
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        "# shmring benchmarks",
        "",
        f"Command: `{meta['command']}` — {meta['started']}, {meta['duration_s']:.0f} s.",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, L3 {machine['l3_cache']}, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}, "
        f"numpy {machine['versions'].get('numpy')}, shmring {machine['versions'].get('shmring')} "
        f"(commit {machine.get('git_commit')}). Shared machine: figures are medians over "
        f"{meta['repeats']} undisturbed runs per cell; `~` marks a median over disturbed runs "
        f"(other processes used > {meta['noise_threshold']} cores during the run).",
        "",
    ]
    setup = "each pinned to its own CPU" if meta["pin"] else "not pinned"
    lines += [
        f"1 producer process → 1 consumer process ({setup}), the producer creating the "
        "channel; lossless, every frame verified (sequence number in its first and last 8 "
        "bytes, CLOCK_MONOTONIC stamp). The other topologies (supervisor, latest frame, fan-in, "
        "groups, fan-out) follow, each with its table, plot and ratios; processes are pinned "
        "only where each gets a CPU of its own.",
        "",
    ]
    main = bool(sizes(cells, MAIN))
    if main:
        lines += _throughput_sections(cells, images)
    lines += ["## Targets", ""]
    lines += _table(
        ["target", "result", "detail"],
        [[t["target"], _result(t), t["detail"]] for t in targets(cells)],
    )
    if main:
        lines += _latency_cpu_sections(cells, images, meta.get("timing", {}))
    for topology in TOPOLOGIES[1:]:
        if any(c["scenario"] == topology for c in cells):
            lines += _topology(cells, topology, images)
    lines += [
        "## Noise: other processes' CPU during each cell",
        "",
        "Median cores used by other processes during the throughput window (or the only "
        "window), and undisturbed / total runs.",
        "",
    ]
    for scenario in SCENARIOS:
        if any(c["scenario"] == scenario for c in cells):
            lines += [f"{scenario}:", ""]
            lines += _grid(cells, scenario, _noise)
    if asyncio_run := results.get("async_reader"):
        lines += [
            "## asyncio reader",
            "",
            "1 producer → 1 consumer, every frame verified (bench/async_reader.py says what "
            "each row is): `async for` against `for` over the same ring, and against the "
            "asyncio peers; flat out for the frames/s and CPU, paced for latency; medians of "
            f"{asyncio_run.get('repeats', 1)} round(s), every kind once per round.",
            *async_reader.table(asyncio_run["sizes"], asyncio_run["rows"]),
            "",
        ]
    lines += _problems(results)
    return "\n".join(lines).rstrip() + "\n"


def _throughput_sections(cells: Cells, images: dict[str, str]) -> list[str]:
    """1 -> 1 (producer creates): throughput, the memcpy limit, the ratios."""
    lines = []
    if "throughput" in images:
        lines += [f"![throughput]({images['throughput']})", ""]
    lines += ["## Throughput (frames/s · GB/s, after warm-up)", ""]
    lines += _grid(cells, MAIN, _throughput)
    lines += [
        "GB/s is frame bytes delivered per second; `shmring-claim` copies none (the producer "
        "fills the slot in place), so its figure is bytes made available.",
        "",
    ]
    lines += _in_place_note(cells, MAIN)
    limit = _grid(cells, "limit", _throughput)
    if len(limit) > 3:
        lines += ["Physical limit: the same producer loop, one in-process copy, no consumer.", ""]
        lines += limit
    alone = _grid(cells, ALONE, _throughput)
    if len(alone) > 3:
        lines += [
            "write() alone, no reader process: the same producer loop into a block ring with "
            "no reader (frames nobody reads are not kept), into the latest-frame cell's "
            "overwrite ring with no reader (it keeps its newest frames for a reader to come), "
            "and into that overwrite ring with a reader in the writer's process that reads "
            "nothing (`lagging`). Each ÷ the block writer alone:",
            "",
        ]
        lines += alone
        rows = alone_ratios(cells)
        names = [n for n in transports(cells, ALONE) if n != WRITE_ALONE]
        lines += _table(
            ["size", *(f"{n.split('-', 1)[1]} ÷ write-alone" for n in names)],
            [[row["size"], *(_x(row[n]) for n in names)] for row in rows],
        )
    lines += ["## shmring ÷ best peer and ÷ memcpy limit (same run)", ""]
    return lines + _ratio_table(cells, MAIN)


def _latency_cpu_sections(
    cells: Cells, images: dict[str, str], timing: dict[str, float]
) -> list[str]:
    """1 -> 1 (producer creates): latency, the wake-up floor, CPU, the idle reader."""
    lines = ["## One-way latency p50 / p99 (frames paced so they never queue)", ""]
    if "latency" in images:
        lines += [f"![latency]({images['latency']})", ""]
    lines += _grid(cells, MAIN, _latency)
    if any(c["scenario"] == "wake" for c in cells):
        paced = timing.get("latency_s", DEFAULTS.latency_s)
        wake = timing.get("wake_latency_s", paced)  # (older runs paced both alike)
        longer = (
            f", for {wake:g} s a run rather than the table above's {paced:g} s, since these "
            "p99s are compared with each other"
            if wake != paced
            else ""
        )
        lines += [
            f"Wake-up: the kernel's floor and `{SLEEP}`, a reader with `spin=0` that sleeps "
            f"until the writer wakes it (24-byte stamp, same pacing{longer}):",
            "",
        ]
        lines += _grid(cells, "wake", _latency)
    lines += ["## CPU during throughput (cores: producer / consumer)", ""]
    if "cpu" in images:
        lines += [f"![cpu]({images['cpu']})", ""]
    lines += _grid(cells, MAIN, _cpu)
    idle = [c for c in cells if c["scenario"] == MAIN and "idle" in c["phases"]]
    if idle:
        lines += ["Idle reader (attached, no frames flowing):", ""]
        lines += _table(
            ["transport", "reader CPU"],
            [
                [
                    f"`{c['transport']}`",
                    _cell_text(c, f"{100 * c['median'].get('idle_consumer_cores', 0):.3f}% core"),
                ]
                for c in idle
            ],
        )
    return lines


def _noise(cell: dict[str, Any]) -> str:
    m = cell["median"]
    windows = ("throughput", "latest", "latency")  # the measurement window that matters most
    other = next((m[f"{w}_other_cores"] for w in windows if f"{w}_other_cores" in m), None)
    return f"{_cores(other)} ({cell['runs_clean']}/{cell['runs_total']})"


def _x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _result(target: dict[str, Any]) -> str:
    if target["met"] is None and target.get("disturbed"):
        return "not judged (disturbed run)"
    return {True: "met", False: "**missed**", None: "not measured"}[target["met"]]


def _problems(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    skipped = results.get("skipped", {})
    failed = [c for c in results["cells"] if c["status"] != "ok"]
    if skipped:
        lines += ["## Skipped transports", ""]
        lines += _table(["transport", "reason"], [[f"`{k}`", v] for k, v in skipped.items()])
    if failed:
        lines += ["## Failed cells", ""]
        lines += _table(
            ["cell", "reason"],
            [
                [
                    f"{c['scenario']} `{c['transport']}` {c['size']}",
                    str(c["reason"]).replace("|", "/")[:400],
                ]
                for c in failed
            ],
        )
    ok = [c for c in results["cells"] if c["status"] == "ok"]
    disturbed = [c for c in ok if noisy(c)]
    if disturbed:
        names = ", ".join(f"{c['scenario']} {c['transport']} {c['size']}" for c in disturbed)
        lines += [
            f"Noisy cells (`~`, {len(disturbed)} of {len(ok)}: no undisturbed run, so their "
            f"figures are medians over disturbed ones): {names}.",
            "",
        ]
    fewer = [c for c in ok if not noisy(c) and c["runs_clean"] < results["meta"]["repeats"]]
    if fewer:
        lines += [
            f"{len(fewer)} cells had fewer than {results['meta']['repeats']} undisturbed runs "
            "within the budget for repeats; their figures are medians over those.",
            "",
        ]
    return lines


# ---- files and console ----


def write(results: dict[str, Any], outdir: Path) -> dict[str, Path]:
    """results.json, PNG plots and results.md in outdir; returns what was written."""
    outdir.mkdir(parents=True, exist_ok=True)
    images, note = plots(results, outdir)
    if note:
        results["meta"]["plots"] = note
    written = {"json": outdir / "results.json", "markdown": outdir / "results.md", **images}
    written["json"].write_text(json.dumps(results, indent=1, default=str) + "\n")
    written["markdown"].write_text(markdown(results, {k: p.name for k, p in images.items()}))
    return written


# In docs/performance.md, what follows this line is written by hand (run history, notes,
# other benches' pasted output) and survives a rewrite of the generated part above it.
KEPT_BELOW = (
    "<!-- python -m bench --readme rewrites everything above this line and keeps what follows -->"
)


def write_docs(results: dict[str, Any], docs: Path) -> dict[str, Path]:
    """docs/performance.md (keeping what follows KEPT_BELOW) and docs/img/*.png."""
    images, _ = plots(results, docs / "img")
    path = docs / "performance.md"
    kept = path.read_text().partition(KEPT_BELOW)[2].lstrip("\n") if path.exists() else ""
    generated = markdown(results, {k: f"img/{p.name}" for k, p in images.items()})
    path.write_text(f"{generated.rstrip()}\n\n{KEPT_BELOW}\n\n{kept}")
    return {"markdown": path, **images}


def console_summary(results: dict[str, Any]) -> str:
    """Per topology and size, shmring ÷ best peer and ÷ memcpy limit; then the targets."""
    cells: Cells = results["cells"]
    lines = [""]
    for topology in TOPOLOGIES:
        rows = ratios(cells, topology)
        if not rows:
            continue
        what = "writer frames/s" if topology == LATEST_FRAME else "frames/s"
        lines.append(f"{topology}: shmring ÷ best peer and ÷ memcpy limit ({what}, this run):")
        for row in rows:
            for name in row["rated"]:
                fps, job = row[f"{name}_fps"], peer_key(name)
                line = (
                    f"  {row['size']:>12} {name:<14} {fmt_rate(fps):>7}/s = "
                    f"{_x(row[f'{name}_per_best_peer'])} best {peer_label(name)} "
                    f"({_best_peer(row, job)})"
                )
                if name not in ZERO_COPY:  # a way that copies nothing has no copy limit
                    line += (
                        f", {_x(row[f'{name}_per_copy_limit'])} "
                        f"{copy_limit_label(row['writers'])} ({fmt_rate(row['copy_limit_fps'])})"
                    )
                lines.append(line)
            if topology == LATEST_FRAME:
                lines.append(
                    f"  {row['size']:>12} staleness p50 {fmt_us(row['age_us'])} = "
                    f"{_x(row['age_per_peer'])} best peer ({row['age_peer']} "
                    f"{fmt_us(row['age_peer_us'])})"
                )
    if asyncio_run := results.get("async_reader"):
        lines += ["asyncio reader (bench/async_reader.py):"]
        lines += async_reader.table(asyncio_run["sizes"], asyncio_run["rows"])
    lines.append("targets:")
    lines += [f"  [{_result(t)}] {t['target']}: {t['detail']}" for t in targets(cells)]
    skipped = results.get("skipped", {})
    lines += [f"  skipped {k}: {v}" for k, v in skipped.items()]
    failed = [c for c in cells if c["status"] != "ok"]
    lines += [f"  FAILED {c['scenario']} {c['transport']} {c['size']}" for c in failed]
    return "\n".join(lines)
