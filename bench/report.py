# Results -> JSON, markdown tables, PNG plots, the ratios and the targets.
#
# Rules: everything shown is computed from the cells of one run (never from older runs); a cell
# that failed shows as FAILED with its reason, a skipped transport is listed with its reason,
# and a median taken over disturbed runs is marked "~". Targets are evaluated literally and
# reported as met or missed with the numbers; a miss is a finding, not hidden. matplotlib is
# optional (the `bench` extra): without it the plots are skipped and the report says so.
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Cells = list[dict[str, Any]]
WRITE, CLAIM = "shmring-write", "shmring-claim"
SLEEP = "shmring-sleep"  # the wake scenario's blocked shmring reader; its other cells: floors


# ---- lookups ----


def _find(cells: Cells, scenario: str, transport: str, size: str) -> dict[str, Any] | None:
    for cell in cells:
        if (cell["scenario"], cell["transport"], cell["size"]) == (scenario, transport, size):
            return cell
    return None


def _metric(cell: dict[str, Any] | None, key: str) -> float | None:
    if cell is None or cell["status"] != "ok":
        return None
    value = cell["median"].get(key)
    return None if value is None else float(value)


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _sizes(cells: Cells, scenario: str = "main") -> list[str]:
    rows = sorted((c for c in cells if c["scenario"] == scenario), key=lambda c: c["nbytes"])
    return _ordered(c["size"] for c in rows)


def _transports(cells: Cells, scenario: str) -> list[str]:
    return _ordered(c["transport"] for c in cells if c["scenario"] == scenario)


# ---- analysis ----


def ratios(cells: Cells) -> list[dict[str, Any]]:
    """Per size: shmring write/claim against the best peer and the memcpy limits."""
    out = []
    for size in _sizes(cells):
        peers = [
            (c["transport"], _metric(c, "fps"))
            for c in cells
            if c["scenario"] == "main" and c["size"] == size and c["kind"] == "peer"
        ]
        ranked = sorted(((fps, name) for name, fps in peers if fps), reverse=True)
        best = ranked[0] if ranked else (None, None)
        row: dict[str, Any] = {
            "size": size,
            "best_peer": best[1],
            "best_peer_fps": best[0],
            "memcpy_hot_fps": _metric(_find(cells, "limit", "memcpy-hot", size), "fps"),
            "memcpy_ring_fps": _metric(_find(cells, "limit", "memcpy-ring", size), "fps"),
        }
        for name in (WRITE, CLAIM):
            fps = _metric(_find(cells, "main", name, size), "fps")
            row[f"{name}_fps"] = fps
            for ref in ("best_peer", "memcpy_hot"):
                base = row[f"{ref}_fps"]
                row[f"{name}_per_{ref}"] = fps / base if fps and base else None
        out.append(row)
    return out


def targets(cells: Cells) -> list[dict[str, Any]]:
    """The issue's targets, each met / missed / not measured, with its numbers."""
    out: list[dict[str, Any]] = []
    for row in ratios(cells):
        fps, peer, hot = row[f"{WRITE}_fps"], row["best_peer_fps"], row["memcpy_hot_fps"]
        limits = [v for v in (1.1 * peer if peer else None, 0.95 * hot if hot else None) if v]
        need = min(limits) if limits else None
        out.append(
            {
                "target": f"write frames/s at {row['size']} >= min(1.1x best peer, 0.95x memcpy)",
                "value": fps,
                "need": need,
                "met": None if fps is None or need is None else fps >= need,
                "detail": f"best peer {row['best_peer']} {_rate(peer)}, memcpy-hot {_rate(hot)}",
            }
        )
    sizes = _sizes(cells)
    for name in (WRITE, CLAIM):
        idle = (
            _metric(_find(cells, "main", name, sizes[0]), "idle_consumer_cores") if sizes else None
        )
        out.append(
            {
                "target": f"{name} idle reader < 1% of a core",
                "value": idle,
                "need": 0.01,
                "met": None if idle is None else idle < 0.01,
                "detail": f"{100 * idle:.3f}% of a core" if idle is not None else "not measured",
            }
        )
    if len(sizes) >= 2:
        small = _metric(_find(cells, "main", CLAIM, sizes[0]), "fps")
        large = _metric(_find(cells, "main", CLAIM, sizes[-1]), "fps")
        out.append(
            {
                "target": f"claim frames/s at {sizes[-1]} within 2x of {sizes[0]}",
                "value": large / small if small and large else None,
                "need": 0.5,
                "met": None if not (small and large) else large / small >= 0.5,
                "detail": f"{_rate(large)} vs {_rate(small)}",
            }
        )
    sleeper = next((c for c in cells if (c["scenario"], c["transport"]) == ("wake", SLEEP)), None)
    for pct in ("p50", "p99"):
        key = f"latency_{pct}_us"
        floor = min((v for c in _floors(cells) if (v := _metric(c, key))), default=None)
        have = _metric(sleeper, key)
        out.append(
            {
                "target": f"blocked reader ({SLEEP}) wakes within 1.2x the kernel floor ({pct})",
                "value": have,
                "need": 1.2 * floor if floor else None,
                "met": None if not (floor and have) else have <= 1.2 * floor,
                "detail": f"{_us(have)} vs floor {_us(floor)}, 24-byte stamp",
            }
        )
    return out


def _floors(cells: Cells) -> Cells:
    """The wake scenario's kernel-floor cells."""
    return [c for c in cells if c["scenario"] == "wake" and c["transport"] != SLEEP]


# ---- formatting ----


def _rate(fps: float | None) -> str:
    if fps is None:
        return "—"
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if fps >= scale:
            return f"{fps / scale:.3g}{unit}"
    return f"{fps:.3g}"


def _us(us: float | None) -> str:
    if us is None:
        return "—"
    return f"{us / 1e3:.3g} ms" if us >= 1e3 else f"{us:.3g} µs"


def _cores(cores: float | None) -> str:
    return "—" if cores is None else f"{cores:.2f}"


def _cell_text(cell: dict[str, Any] | None, text: str) -> str:
    if cell is None:
        return "·"
    if cell["status"] != "ok":
        return "FAILED"
    return text + ("~" if cell["noisy"] else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _grid(cells: Cells, scenario: str, render: Callable[[dict[str, Any]], str]) -> list[str]:
    """Transports x sizes; render() gets the whole cell (its median, runs, flags)."""
    sizes = _sizes(cells, scenario)
    rows = []
    for name in _transports(cells, scenario):
        row = [f"`{name}`"]
        for size in sizes:
            cell = _find(cells, scenario, name, size)
            row.append(_cell_text(cell, render(cell) if cell else ""))
        rows.append(row)
    return _table(["transport", *sizes], rows)


def _throughput(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return f"{_rate(m.get('fps'))} · {m.get('gbps', 0):.2f} GB/s"


def _latency(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return f"{_us(m.get('latency_p50_us'))} / {_us(m.get('latency_p99_us'))}"


def _latest(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return (
        f"write {_rate(m.get('write_fps'))}/s, read {_rate(m.get('read_fps'))}/s, "
        f"age {_us(m.get('age_p50_us'))} / {_us(m.get('age_p99_us'))}"
    )


def _cpu(cell: dict[str, Any]) -> str:
    m = cell["median"]
    return f"{_cores(m.get('producer_cores'))} / {_cores(m.get('consumer_cores'))}"


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
        f"1 producer process → 1 consumer process ({setup}); lossless, every frame verified "
        "(sequence number in its first and last 8 bytes, CLOCK_MONOTONIC stamp).",
        "",
    ]
    if "throughput" in images:
        lines += [f"![throughput]({images['throughput']})", ""]
    lines += ["## Throughput (frames/s · GB/s, after warm-up)", ""]
    lines += _grid(cells, "main", _throughput)
    lines += [
        "GB/s is frame bytes delivered per second; `shmring-claim` copies none (the producer "
        "fills the slot in place), so its figure is bytes made available.",
        "",
    ]
    limit = _grid(cells, "limit", _throughput)
    if len(limit) > 3:
        lines += ["Physical limit: the same producer loop, one in-process copy, no consumer.", ""]
        lines += limit
    lines += ["## shmring ÷ best peer and ÷ memcpy limit (same run)", ""]
    rows = []
    for row in ratios(cells):
        rows.append(
            [
                row["size"],
                f"{row['best_peer'] or '—'} {_rate(row['best_peer_fps'])}",
                _rate(row["memcpy_hot_fps"]),
                *(
                    f"{_rate(row[f'{n}_fps'])}: {_x(row[f'{n}_per_best_peer'])} peer, "
                    f"{_x(row[f'{n}_per_memcpy_hot'])} memcpy"
                    for n in (WRITE, CLAIM)
                ),
            ]
        )
    lines += _table(["size", "best peer", "memcpy-hot", "write", "claim"], rows)
    lines += ["## Targets", ""]
    lines += _table(
        ["target", "result", "detail"],
        [[t["target"], _met(t["met"]), t["detail"]] for t in targets(cells)],
    )
    lines += ["## One-way latency p50 / p99 (frames paced so they never queue)", ""]
    if "latency" in images:
        lines += [f"![latency]({images['latency']})", ""]
    lines += _grid(cells, "main", _latency)
    wake = [c for c in cells if c["scenario"] == "wake"]
    if wake:
        lines += [
            f"Wake-up: the kernel's floor and `{SLEEP}`, a reader with `spin=0` that sleeps "
            "until the writer wakes it (24-byte stamp, same pacing):",
            "",
        ]
        lines += _grid(cells, "wake", _latency)
    lines += ["## CPU during throughput (cores: producer / consumer)", ""]
    if "cpu" in images:
        lines += [f"![cpu]({images['cpu']})", ""]
    lines += _grid(cells, "main", _cpu)
    idle = [c for c in cells if c["scenario"] == "main" and "idle" in c["phases"]]
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
    if any(c["scenario"] == "fanout" for c in cells):
        lines += ["## Fan-out 1 → 3 readers (frames/s each reader got · GB/s; CPU)", ""]
        lines += _grid(cells, "fanout", lambda c: f"{_throughput(c)}; {_cpu(c)} cores")
    if any(c["scenario"] == "overwrite" for c in cells):
        lines += [
            "## Overwrite ring, a reader that only wants the latest frame",
            "",
            "Writer flat out (never waits); the reader takes `latest()`, works 1 ms holding it, "
            "and checks the frame did not change meanwhile. Age = time from the stamp to "
            "`latest()` returning.",
            "",
        ]
        lines += _grid(cells, "overwrite", _latest)
    lines += [
        "## Noise: other processes' CPU during each cell",
        "",
        "Median cores used by other processes during the throughput window (or the only "
        "window), and undisturbed / total runs.",
        "",
    ]
    for scenario in ("wake", "main", "limit", "fanout", "overwrite"):
        if any(c["scenario"] == scenario for c in cells):
            lines += [f"{scenario}:", ""]
            lines += _grid(cells, scenario, _noise)
    lines += _problems(results)
    return "\n".join(lines).rstrip() + "\n"


def _noise(cell: dict[str, Any]) -> str:
    m = cell["median"]
    windows = ("throughput", "latest", "latency")  # the measurement window that matters most
    other = next((m[f"{w}_other_cores"] for w in windows if f"{w}_other_cores" in m), None)
    return f"{_cores(other)} ({cell['runs_clean']}/{cell['runs_total']})"


def _x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _met(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


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
    noisy = [c for c in ok if c["noisy"]]
    if noisy:
        names = ", ".join(f"{c['scenario']} {c['transport']} {c['size']}" for c in noisy)
        lines += [
            f"Noisy cells (`~`, {len(noisy)} of {len(ok)}: fewer than "
            f"{results['meta']['repeats']} undisturbed runs, so the median includes disturbed "
            f"ones): {names}.",
            "",
        ]
    return lines


# ---- plots ----


def plots(results: dict[str, Any], outdir: Path) -> tuple[dict[str, Path], str | None]:
    """PNG plots; ({} , reason) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return {}, f"plots skipped: {exc}"
    cells: Cells = results["cells"]
    made: dict[str, Path] = {}
    outdir.mkdir(parents=True, exist_ok=True)
    palette = [f"C{i}" for i in range(10)]  # matplotlib's default cycle
    movers = _ordered(c["transport"] for c in cells if c["kind"] in ("shmring", "peer"))
    color: dict[str, Any] = {name: palette[i % 10] for i, name in enumerate(movers)}
    color.update({"memcpy-hot": "black", "memcpy-ring": "dimgray"})
    ticks = sorted({(c["nbytes"], c["size"]) for c in cells if c["scenario"] == "main"})

    fig, (ax_fps, ax_gbps) = plt.subplots(1, 2, figsize=(13, 5.5))
    for scenario, style in (("main", "-"), ("limit", ":")):
        for name in _transports(cells, scenario):
            points = [
                (c["nbytes"], c["median"]["fps"], c["median"]["gbps"])
                for c in cells
                if c["scenario"] == scenario and c["transport"] == name and _metric(c, "fps")
            ]
            if not points:
                continue
            points.sort()
            x = [p[0] for p in points]
            width = 2.6 if name.startswith("shmring") else 1.3
            line = {"lw": width, "marker": "o", "label": name, "color": color[name]}
            ax_fps.plot(x, [p[1] for p in points], style, **line)
            ax_gbps.plot(x, [p[2] for p in points], style, **line)
    for ax, label in ((ax_fps, "frames/s"), (ax_gbps, "frame bytes delivered, GB/s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("frame size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ticks:
            ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=8)
            ax.minorticks_off()
    ax_fps.set_title("Throughput, 1 producer → 1 consumer (lossless)")
    ax_gbps.set_title("Bandwidth")
    ax_gbps.legend(fontsize=8, loc="lower right")
    made["throughput"] = _save(fig, outdir / "throughput.png")

    sizes = _sizes(cells)
    if sizes:
        shown = [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes
        fig, axes = plt.subplots(1, len(shown), figsize=(7 * len(shown), 5.5), squeeze=False)
        floor = min(
            (v for c in _floors(cells) if (v := _metric(c, "latency_p50_us"))), default=None
        )
        for ax, size in zip(axes[0], shown, strict=True):
            names = [
                n
                for n in _transports(cells, "main")
                if _metric(_find(cells, "main", n, size), "latency_p50_us")
            ]
            rows = [_find(cells, "main", n, size) for n in names]
            ys = range(len(names))
            ax.barh(
                [y + 0.2 for y in ys],
                [_metric(c, "latency_p50_us") or 0 for c in rows],
                0.4,
                label="p50",
            )
            ax.barh(
                [y - 0.2 for y in ys],
                [_metric(c, "latency_p99_us") or 0 for c in rows],
                0.4,
                label="p99",
            )
            if floor:
                ax.axvline(floor, color="k", ls="--", lw=1, label="kernel wake floor p50")
            ax.set_yticks(list(ys), names)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlabel("one-way latency (µs)")
            ax.set_title(f"Latency at {size}, paced")
            ax.grid(True, axis="x", which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        made["latency"] = _save(fig, outdir / "latency.png")

        names = _transports(cells, "main")
        fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), squeeze=False)
        width = 0.8 / len(sizes)
        for ax, key, title in zip(
            axes[0],
            ("consumer_cores", "producer_cores"),
            ("Consumer CPU during throughput", "Producer CPU during throughput"),
            strict=True,
        ):
            for i, size in enumerate(sizes):
                values = [_metric(_find(cells, "main", n, size), key) or 0 for n in names]
                ax.bar([x + i * width for x in range(len(names))], values, width, label=size)
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=35)
            ax.set_ylabel("cores")
            ax.set_title(title)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        made["cpu"] = _save(fig, outdir / "cpu.png")
    return made, None


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


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
    """Per size, shmring ÷ best peer and ÷ memcpy limit; then the targets."""
    cells: Cells = results["cells"]
    lines = ["", "shmring ÷ best peer and ÷ memcpy limit (frames/s, this run):"]
    for row in ratios(cells):
        for name in (WRITE, CLAIM):
            fps = row[f"{name}_fps"]
            if fps is None:
                continue
            lines.append(
                f"  {row['size']:>12} {name:<14} {_rate(fps):>7}/s = "
                f"{_x(row[f'{name}_per_best_peer'])} best peer "
                f"({row['best_peer']} {_rate(row['best_peer_fps'])}), "
                f"{_x(row[f'{name}_per_memcpy_hot'])} memcpy-hot ({_rate(row['memcpy_hot_fps'])})"
            )
    lines.append("targets:")
    lines += [f"  [{_met(t['met'])}] {t['target']}: {t['detail']}" for t in targets(cells)]
    skipped = results.get("skipped", {})
    lines += [f"  skipped {k}: {v}" for k, v in skipped.items()]
    failed = [c for c in cells if c["status"] != "ok"]
    lines += [f"  FAILED {c['scenario']} {c['transport']} {c['size']}" for c in failed]
    return "\n".join(lines)
