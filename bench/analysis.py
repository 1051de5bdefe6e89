# The figures drawn from one run's cells: lookups, shmring ÷ best peer per topology and size,
# and the targets.
#
# Rules: everything is computed from the cells of one run (never from older runs); a failed or
# missing cell gives no figure ("not measured", never a guess). Targets are evaluated literally
# and come back met / missed / not measured with their numbers; a miss is a finding, not hidden.
# Theory: a topology's "best peer" is the peer (kind "peer") with the best figure at that size in
# the same topology, doing the same job (a peer that drops frames, PUB/SUB, is shown beside the
# others with its drops but ranks only for the latest frame, where every one skips): most
# frames/s (per reader for fan-out, all readers for groups, the one reader for fan-in), or for
# the latest frame most writer frames/s and, separately, the lowest staleness p50. The rated
# shmring ways are write, claim and, for the latest frame, overwrite + latest().
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.cell import ALONE, FAN_IN, FAN_OUT, GROUPS, LATEST_FRAME, MAIN, SUPERVISOR

Cells = list[dict[str, Any]]
WRITE, CLAIM, LATEST = "shmring-write", "shmring-claim", "shmring-latest"
RATED = (WRITE, CLAIM, LATEST)
WRITE_ALONE = "shmring-write-alone"  # scenario ALONE's block writer, the others' base
SLEEP = "shmring-sleep"  # the wake scenario's blocked shmring reader; its other cells: floors
PEER_TARGET_TOPOLOGIES = (MAIN, SUPERVISOR, FAN_IN, GROUPS, FAN_OUT)
SUPERVISOR_SHARE = 0.9  # supervisor >= 0.9x producer-creates
OVERWRITE_SHARE = 0.8  # overwrite write >= 0.8x block write


# ---- lookups ----


def find(cells: Cells, scenario: str, transport: str, size: str) -> dict[str, Any] | None:
    for cell in cells:
        if (cell["scenario"], cell["transport"], cell["size"]) == (scenario, transport, size):
            return cell
    return None


def metric(cell: dict[str, Any] | None, key: str) -> float | None:
    if cell is None or cell["status"] != "ok":
        return None
    value = cell["median"].get(key)
    return None if value is None else float(value)


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def sizes(cells: Cells, scenario: str = MAIN) -> list[str]:
    rows = sorted((c for c in cells if c["scenario"] == scenario), key=lambda c: c["nbytes"])
    return ordered(c["size"] for c in rows)


def transports(cells: Cells, scenario: str) -> list[str]:
    return ordered(c["transport"] for c in cells if c["scenario"] == scenario)


def rate_key(scenario: str) -> str:
    """The frames/s figure a topology is ranked on."""
    return "write_fps" if scenario == LATEST_FRAME else "fps"


def floors(cells: Cells) -> Cells:
    """The wake scenario's kernel-floor cells."""
    return [c for c in cells if c["scenario"] == "wake" and c["transport"] != SLEEP]


# ---- ratios ----


def best_peer(
    cells: Cells, scenario: str, size: str, key: str, lowest: bool = False
) -> tuple[str | None, float | None]:
    """(name, figure) of the peer with the best `key` at `size` in `scenario`."""
    figures = [
        (value, c["transport"]) for c in _peers(cells, scenario, size) if (value := metric(c, key))
    ]
    if not figures:
        return None, None
    value, name = min(figures) if lowest else max(figures)
    return name, value


def failed_peers(cells: Cells, scenario: str, size: str) -> list[str]:
    """Peers whose cell ran at `size` in `scenario` and failed: the best peer is unknown
    then (a peer that is not installed is skipped instead, and reported as such)."""
    return [c["transport"] for c in _peers(cells, scenario, size) if c["status"] != "ok"]


def _peers(cells: Cells, scenario: str, size: str) -> Cells:
    """The peer cells that do `scenario`'s job at `size` (a peer that may drop frames does
    not do a lossless topology's)."""
    return [
        c
        for c in cells
        if c["scenario"] == scenario and c["size"] == size and c["kind"] == "peer"
        if not c.get("drops") or scenario == LATEST_FRAME
    ]


def ratios(cells: Cells, scenario: str = MAIN) -> list[dict[str, Any]]:
    """Per size: each rated shmring way against the best peer and the memcpy limits."""
    key = rate_key(scenario)
    out = []
    for size in sizes(cells, scenario):
        name, fps = best_peer(cells, scenario, size, key)
        row: dict[str, Any] = {
            "size": size,
            "best_peer": name,
            "best_peer_fps": fps,
            "failed_peers": failed_peers(cells, scenario, size),
            "memcpy_hot_fps": metric(find(cells, "limit", "memcpy-hot", size), "fps"),
            "memcpy_ring_fps": metric(find(cells, "limit", "memcpy-ring", size), "fps"),
            "rated": [n for n in RATED if find(cells, scenario, n, size)],
        }
        for rated in row["rated"]:
            have = metric(find(cells, scenario, rated, size), key)
            row[f"{rated}_fps"] = have
            for ref in ("best_peer", "memcpy_hot"):
                base = row[f"{ref}_fps"]
                row[f"{rated}_per_{ref}"] = have / base if have and base else None
        if scenario == LATEST_FRAME:
            row["age_peer"], row["age_peer_us"] = best_peer(
                cells, scenario, size, "age_p50_us", lowest=True
            )
            age = metric(find(cells, scenario, LATEST, size), "age_p50_us")
            row["age_us"] = age
            row["age_per_peer"] = age / row["age_peer_us"] if age and row["age_peer_us"] else None
        out.append(row)
    return out


def alone_ratios(cells: Cells) -> list[dict[str, Any]]:
    """Per size: each writer of scenario ALONE ÷ the block writer alone (information: the
    overwrite target is judged on the latest-frame writer against the 1 -> 1 writer, the
    comparison behind the issue's own figures)."""
    out = []
    for size in sizes(cells, ALONE):
        base = metric(find(cells, ALONE, WRITE_ALONE, size), "fps")
        row: dict[str, Any] = {"size": size}
        for name in transports(cells, ALONE):
            have = metric(find(cells, ALONE, name, size), "fps")
            row[name] = have / base if have and base else None
        out.append(row)
    return out


# ---- targets ----


def _target(
    target: str, value: float | None, need: float | None, met: bool | None, detail: str
) -> dict[str, Any]:
    return {"target": target, "value": value, "need": need, "met": met, "detail": detail}


def _at_least(target: str, value: float | None, need: float | None, detail: str) -> dict[str, Any]:
    met = None if value is None or need is None else value >= need
    return _target(target, value, need, met, detail)


def _peer_targets(cells: Cells, scenario: str, rated: str) -> list[dict[str, Any]]:
    """`rated` >= min(1.1x best peer, 0.95x memcpy-hot) at every size of `scenario`."""
    out = []
    for row in ratios(cells, scenario):
        fps, peer, hot = row.get(f"{rated}_fps"), row["best_peer_fps"], row["memcpy_hot_fps"]
        limits = [v for v in (1.1 * peer if peer else None, 0.95 * hot if hot else None) if v]
        detail = (
            f"{fmt_rate(fps)} vs best peer {row['best_peer']} {fmt_rate(peer)}, "
            f"memcpy-hot {fmt_rate(hot)}"
        )
        name = f"{scenario}: {rated} frames/s at {row['size']} >= min(1.1x best peer, 0.95x"
        target = _at_least(f"{name} memcpy)", fps, min(limits) if limits else None, detail)
        failed = row["failed_peers"]
        if failed and not (fps and hot and fps >= 0.95 * hot):  # a failed peer may be best
            target.update(met=None, detail=f"{detail}; not judged: {', '.join(failed)} failed")
        out.append(target)
    return out


def _share_targets(
    cells: Cells, scenario: str, rated: str, key: str, base: tuple[str, str], share: float
) -> list[dict[str, Any]]:
    """`rated`'s `key` in `scenario` >= share x the base cell's fps (base: scenario,
    transport), at every size."""
    out = []
    for size in sizes(cells, scenario):
        have = metric(find(cells, scenario, rated, size), key)
        ref = metric(find(cells, base[0], base[1], size), "fps")
        out.append(
            _at_least(
                f"{scenario}: {rated} at {size} >= {share}x {base[0]} {base[1]}",
                have,
                share * ref if ref else None,
                f"{fmt_rate(have)} vs {fmt_rate(ref)}",
            )
        )
    return out


def _staleness_targets(cells: Cells) -> list[dict[str, Any]]:
    out = []
    for row in ratios(cells, LATEST_FRAME):
        age, peer, failed = row["age_us"], row["age_peer_us"], row["failed_peers"]
        detail = f"{fmt_us(age)} vs {row['age_peer']} {fmt_us(peer)}"
        out.append(
            _target(
                f"latest: {LATEST} staleness p50 at {row['size']} <= the best peer's",
                age,
                peer,
                None if age is None or peer is None or failed else age <= peer,
                f"{detail}; not judged: {', '.join(failed)} failed" if failed else detail,
            )
        )
    return out


def targets(cells: Cells) -> list[dict[str, Any]]:
    """The issues' targets, each met / missed / not measured, with its numbers."""
    out: list[dict[str, Any]] = []
    for scenario in PEER_TARGET_TOPOLOGIES:
        if any(c["scenario"] == scenario for c in cells):
            out += _peer_targets(cells, scenario, WRITE)
    main_sizes = sizes(cells)
    for name in (WRITE, CLAIM):
        idle = (
            metric(find(cells, MAIN, name, main_sizes[0]), "idle_consumer_cores")
            if main_sizes
            else None
        )
        out.append(
            _target(
                f"{name} idle reader < 1% of a core",
                idle,
                0.01,
                None if idle is None else idle < 0.01,
                f"{100 * idle:.3f}% of a core" if idle is not None else "not measured",
            )
        )
    if len(main_sizes) >= 2:
        small = metric(find(cells, MAIN, CLAIM, main_sizes[0]), "fps")
        large = metric(find(cells, MAIN, CLAIM, main_sizes[-1]), "fps")
        out.append(
            _at_least(
                f"claim frames/s at {main_sizes[-1]} within 2x of {main_sizes[0]}",
                large / small if small and large else None,
                0.5,
                f"{fmt_rate(large)} vs {fmt_rate(small)}",
            )
        )
    sleeper = next((c for c in cells if (c["scenario"], c["transport"]) == ("wake", SLEEP)), None)
    for pct in ("p50", "p99"):
        key = f"latency_{pct}_us"
        floor = min((v for c in floors(cells) if (v := metric(c, key))), default=None)
        have = metric(sleeper, key)
        out.append(
            _target(
                f"blocked reader ({SLEEP}) wakes within 1.2x the kernel floor ({pct})",
                have,
                1.2 * floor if floor else None,
                None if not (floor and have) else have <= 1.2 * floor,
                f"{fmt_us(have)} vs floor {fmt_us(floor)}, 24-byte stamp",
            )
        )
    for name in (WRITE, CLAIM):
        if any(c["scenario"] == SUPERVISOR and c["transport"] == name for c in cells):
            out += _share_targets(cells, SUPERVISOR, name, "fps", (MAIN, name), SUPERVISOR_SHARE)
    if any(c["scenario"] == LATEST_FRAME for c in cells):
        out += _peer_targets(cells, LATEST_FRAME, LATEST)
        out += _share_targets(
            cells, LATEST_FRAME, LATEST, "write_fps", (MAIN, WRITE), OVERWRITE_SHARE
        )
        out += _staleness_targets(cells)
    return out


# ---- number formats (shared with the report) ----


def fmt_rate(fps: float | None) -> str:
    if fps is None:
        return "—"
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if fps >= scale:
            return f"{fps / scale:.3g}{unit}"
    return f"{fps:.3g}"


def fmt_us(us: float | None) -> str:
    if us is None:
        return "—"
    return f"{us / 1e3:.3g} ms" if us >= 1e3 else f"{us:.3g} µs"
