# The report's PNG plots: 1 -> 1 throughput, latency and CPU, and one plot per topology.
#
# Rules: plots show the medians of one run's cells (failed cells are left out, never drawn as
# zero); matplotlib is optional (the `bench` extra): without it no plot is made and the caller
# says so. shmring's lines are drawn thicker; a transport keeps its colour in every plot.
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.analysis import (
    WRITE_RATE,
    Cells,
    find,
    floors,
    metric,
    ordered,
    reaches_reader,
    sizes,
    transports,
)
from bench.cell import LATEST_FRAME, MAIN, TITLES, TOPOLOGIES


def plots(results: dict[str, Any], outdir: Path) -> tuple[dict[str, Path], str | None]:
    """PNG plots; ({} , reason) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return {}, f"plots skipped: {exc}"
    cells: Cells = results["cells"]
    outdir.mkdir(parents=True, exist_ok=True)
    palette = [f"C{i}" for i in range(10)]  # matplotlib's default cycle
    movers = ordered(c["transport"] for c in cells if c["kind"] in ("shmring", "peer"))
    color: dict[str, Any] = {name: palette[i % 10] for i, name in enumerate(movers)}
    color.update({"memcpy-hot": "black", "memcpy-ring": "dimgray"})
    made: dict[str, Path] = {}
    if sizes(cells, MAIN):
        made["throughput"] = _throughput(plt, cells, color, outdir / "throughput.png")
        made["latency"] = _latency(plt, cells, outdir / "latency.png")
        made["cpu"] = _cpu(plt, cells, outdir / "cpu.png")
    for topology in TOPOLOGIES[1:]:
        if sizes(cells, topology):
            made[topology] = _topology(plt, cells, topology, color, outdir / f"{topology}.png")
    return made, None


def _lines(
    ax: Any, cells: Cells, scenario: str, key: str, color: dict[str, Any], style: str = "-"
) -> None:
    """One line per transport of `scenario`: `key` against frame size (dashed: a peer that
    drops frames, where the others deliver every one, or a writer rate that counts frames
    discarded in the writer's process)."""
    for name in transports(cells, scenario):
        mine = [c for c in cells if c["scenario"] == scenario and c["transport"] == name]
        points = sorted((c["nbytes"], v) for c in mine if (v := metric(c, key)) is not None)
        if points:
            drops = scenario != LATEST_FRAME and any(c.get("drops") for c in mine)
            discards = key == WRITE_RATE and not all(reaches_reader(c) for c in mine)
            note = " (drops frames)" if drops else " (discards writes)" if discards else ""
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "--" if note else style,
                lw=2.6 if name.startswith("shmring") else 1.3,
                marker="o",
                label=name + note,
                color=color[name],
            )


def _size_axis(ax: Any, cells: Cells, scenario: str, label: str, log_y: bool = True) -> None:
    ticks = sorted({(c["nbytes"], c["size"]) for c in cells if c["scenario"] == scenario})
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("frame size")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    if ticks:
        ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=8)
        ax.minorticks_off()


def _throughput(plt: Any, cells: Cells, color: dict[str, Any], path: Path) -> Path:
    fig, (ax_fps, ax_gbps) = plt.subplots(1, 2, figsize=(13, 5.5))
    for scenario, style in ((MAIN, "-"), ("limit", ":")):
        _lines(ax_fps, cells, scenario, "fps", color, style)
        _lines(ax_gbps, cells, scenario, "gbps", color, style)
    _size_axis(ax_fps, cells, MAIN, "frames/s")
    _size_axis(ax_gbps, cells, MAIN, "frame bytes delivered, GB/s")
    ax_fps.set_title("Throughput, 1 producer → 1 consumer (lossless)")
    ax_gbps.set_title("Bandwidth")
    ax_gbps.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _latency(plt: Any, cells: Cells, path: Path) -> Path:
    main_sizes = sizes(cells, MAIN)
    shown = [main_sizes[0], main_sizes[-1]] if len(main_sizes) > 1 else main_sizes
    fig, axes = plt.subplots(1, len(shown), figsize=(7 * len(shown), 5.5), squeeze=False)
    floor = min((v for c in floors(cells) if (v := metric(c, "latency_p50_us"))), default=None)
    for ax, size in zip(axes[0], shown, strict=True):
        names = [
            n
            for n in transports(cells, MAIN)
            if metric(find(cells, MAIN, n, size), "latency_p50_us")
        ]
        rows = [find(cells, MAIN, n, size) for n in names]
        ys = range(len(names))
        for offset, pct in ((0.2, "p50"), (-0.2, "p99")):
            ax.barh(
                [y + offset for y in ys],
                [metric(c, f"latency_{pct}_us") or 0 for c in rows],
                0.4,
                label=pct,
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
    return _save(fig, path)


def _cpu(plt: Any, cells: Cells, path: Path) -> Path:
    main_sizes = sizes(cells, MAIN)
    names = transports(cells, MAIN)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), squeeze=False)
    width = 0.8 / len(main_sizes)
    for ax, key, title in zip(
        axes[0],
        ("consumer_cores", "producer_cores"),
        ("Consumer CPU during throughput", "Producer CPU during throughput"),
        strict=True,
    ):
        for i, size in enumerate(main_sizes):
            values = [metric(find(cells, MAIN, n, size), key) or 0 for n in names]
            ax.bar([x + i * width for x in range(len(names))], values, width, label=size)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=35)
        ax.set_ylabel("cores")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _topology(plt: Any, cells: Cells, topology: str, color: dict[str, Any], path: Path) -> Path:
    """Throughput topologies: frames/s and both sides' CPU; latest frame: writer frames/s,
    distinct frames/s the reader got, staleness p50."""
    if topology == LATEST_FRAME:
        panels = (
            (WRITE_RATE, "writer frames/s", True),
            ("read_fps", "distinct frames/s read", True),
            ("age_p50_us", "staleness p50 (µs)", True),
        )
    else:
        panels = (
            ("fps", "frames/s", True),
            ("producer_cores", "writer CPU (cores, all writers)", False),
            ("consumer_cores", "reader CPU (cores, all readers)", False),
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (key, label, log_y) in zip(axes[0], panels, strict=True):
        _lines(ax, cells, topology, key, color)
        _size_axis(ax, cells, topology, label, log_y)
        ax.set_title(label)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(TITLES[topology])
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
