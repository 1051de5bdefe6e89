# The figures drawn from one run's cells: lookups, shmring ÷ best peer per topology and size,
# and the targets.
#
# Rules: everything is computed from the cells of one run (never from older runs); a failed or
# missing cell gives no figure ("not measured", never a guess). Targets are evaluated literally
# and come back met / missed / not measured with their numbers; a miss is a finding, not hidden.
# A target that rests on a cell whose figures include disturbed runs (`~`, noisy) is not judged
# (its numbers are still shown), since other processes' load could have made it either way.
# Theory: a topology's "best peer" is the peer (kind "peer") with the best figure at that size in
# the same topology, doing the same job. write (and overwrite + latest()) copies each frame into
# the channel, so it ranks against the peers that copy every frame; claim fills its slot in
# place, so it ranks against the zero-copy peers only, those that write a loaned sample in place
# (the transport's `copies` is False; a results.json from before the field holds copying peers
# only). A peer that drops frames, PUB/SUB, is shown beside the others with its drops but ranks
# only for the latest frame, where every one skips. The best figure is the most frames/s (per
# reader for fan-out, all readers for groups, the one reader for fan-in), or for the latest
# frame the most writer frames/s and, separately, the lowest staleness p50. A writer
# rate ranks only where every frame written becomes visible to the reader: a peer that discards
# frames inside the writer's process (pyzmq-conflate) counts frames no reader could ever see.
# The copy limit is memcpy-hot times the writers copying in parallel (two for fan-in); it bounds
# the ways that copy (write >= min(1.1x best peer, 0.95x the copy limit)), not claim, which
# copies nothing (claim >= 1.1x the best zero-copy peer). The rated shmring ways are write, claim
# and, for the latest frame, overwrite + latest().
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.cell import ALONE, FAN_IN, FAN_OUT, GROUPS, LATEST_FRAME, MAIN, SUPERVISOR

Cells = list[dict[str, Any]]
WRITE, CLAIM, LATEST = "shmring-write", "shmring-claim", "shmring-latest"
RATED = (WRITE, CLAIM, LATEST)
ZERO_COPY = frozenset({CLAIM})  # the rated ways that copy nothing: ranked against zero-copy peers
WRITE_RATE = "write_fps"  # the latest frame's rank: the writer's frames/s
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
    return WRITE_RATE if scenario == LATEST_FRAME else "fps"


def reaches_reader(cell: dict[str, Any]) -> bool:
    """Every frame the cell's writer sent became visible to a reader (a results.json from
    before the field: every transport but pyzmq-conflate, the one whose writer discards)."""
    return bool(cell.get("writes_reach_reader", cell["transport"] != "pyzmq-conflate"))


def unranked(cells: Cells, scenario: str) -> list[str]:
    """The peers of `scenario` shown but not ranked on its writer rate."""
    if rate_key(scenario) != WRITE_RATE:
        return []
    return ordered(
        c["transport"]
        for c in cells
        if c["scenario"] == scenario and c["kind"] == "peer" and not reaches_reader(c)
    )


def copies(cell: dict[str, Any]) -> bool:
    """The cell's writer copies every frame into the channel (a results.json from before the
    field: every transport does)."""
    return bool(cell.get("copies", True))


def zero_copy_peers(cells: Cells, scenario: str) -> list[str]:
    """The peers of `scenario` that write frames in place: claim's, not write's."""
    return ordered(
        c["transport"]
        for c in cells
        if c["scenario"] == scenario and c["kind"] == "peer" and not copies(c)
    )


def peer_key(rated: str) -> str:
    """`rated`'s best peer in a ratios() row: best_<key>, best_<key>_fps, failed_<key>s."""
    return "zero_copy_peer" if rated in ZERO_COPY else "peer"


def peer_label(rated: str) -> str:
    """What `rated`'s best peer is called in targets and tables."""
    return "zero-copy peer" if rated in ZERO_COPY else "peer"


def writers(cells: Cells, scenario: str) -> int:
    """Writer processes in `scenario`: they copy in parallel, so the copy limit is this many
    times memcpy-hot."""
    return max((c.get("producers", 1) for c in cells if c["scenario"] == scenario), default=1)


def copy_limit_label(count: int) -> str:
    return "memcpy-hot" if count == 1 else f"memcpy-hot ×{count} ({count} writers)"


def noisy(cell: dict[str, Any]) -> bool:
    """The cell's figures are medians over disturbed runs: none of its runs was undisturbed.
    (Judged by runs_clean: older results flagged `noisy` any cell with fewer undisturbed runs
    than asked for, whose figures are medians over those all the same.)"""
    clean = cell.get("runs_clean")
    return bool(cell.get("noisy")) if clean is None else clean == 0


def disturbed(*found: dict[str, Any] | None) -> list[str]:
    """`transport size` of each cell among `found` whose figures include disturbed runs."""
    return [
        f"{c['transport']} {c['size']}"
        for c in found
        if c is not None and c["status"] == "ok" and noisy(c)
    ]


def floors(cells: Cells) -> Cells:
    """The wake scenario's kernel-floor cells."""
    return [c for c in cells if c["scenario"] == "wake" and c["transport"] != SLEEP]


# ---- ratios ----


def best_peer(
    cells: Cells, scenario: str, size: str, key: str, lowest: bool = False, copying: bool = True
) -> tuple[str | None, float | None]:
    """(name, figure) of the peer with the best `key` at `size` in `scenario`, among the
    peers that copy every frame (copying=False: the zero-copy ones)."""
    figures = [
        (value, c["transport"])
        for c in _peers(cells, scenario, size, key, copying)
        if (value := metric(c, key))
    ]
    if not figures:
        return None, None
    value, name = min(figures) if lowest else max(figures)
    return name, value


def failed_peers(
    cells: Cells, scenario: str, size: str, key: str, copying: bool = True
) -> list[str]:
    """Peers ranked on `key` whose cell ran at `size` in `scenario` and failed: the best peer
    is unknown then (a peer that is not installed is skipped instead, and reported as such)."""
    return [
        c["transport"] for c in _peers(cells, scenario, size, key, copying) if c["status"] != "ok"
    ]


def _peers(cells: Cells, scenario: str, size: str, key: str, copying: bool) -> Cells:
    """The peer cells ranked on `key` in `scenario` at `size`: those doing its job (copying
    every frame or writing it in place, as `copying` says; a peer that may drop frames does not
    do a lossless topology's; a writer rate ranks only writers whose every frame reaches the
    reader)."""
    return [
        c
        for c in cells
        if c["scenario"] == scenario and c["size"] == size and c["kind"] == "peer"
        if copies(c) == copying
        if not c.get("drops") or scenario == LATEST_FRAME
        if key != WRITE_RATE or reaches_reader(c)
    ]


def ratios(cells: Cells, scenario: str = MAIN) -> list[dict[str, Any]]:
    """Per size: each rated shmring way against the best peer doing its job (best_peer: the
    copying peers, best_zero_copy_peer: the zero-copy ones; see peer_key) and, for a way that
    copies, the copy limit."""
    key = rate_key(scenario)
    count = writers(cells, scenario)
    out = []
    for size in sizes(cells, scenario):
        hot = metric(find(cells, "limit", "memcpy-hot", size), "fps")
        row: dict[str, Any] = {
            "size": size,
            "writers": count,
            "copy_limit_fps": count * hot if hot else None,
            "memcpy_ring_fps": metric(find(cells, "limit", "memcpy-ring", size), "fps"),
            "rated": [n for n in RATED if find(cells, scenario, n, size)],
        }
        for job, copying in (("peer", True), ("zero_copy_peer", False)):
            row[f"best_{job}"], row[f"best_{job}_fps"] = best_peer(
                cells, scenario, size, key, copying=copying
            )
            row[f"failed_{job}s"] = failed_peers(cells, scenario, size, key, copying)
        for rated in row["rated"]:
            have = metric(find(cells, scenario, rated, size), key)
            peer = row[f"best_{peer_key(rated)}_fps"]
            row[f"{rated}_fps"] = have
            row[f"{rated}_per_best_peer"] = have / peer if have and peer else None
            if rated not in ZERO_COPY:
                limit = row["copy_limit_fps"]
                row[f"{rated}_per_copy_limit"] = have / limit if have and limit else None
        if scenario == LATEST_FRAME:
            row["age_peer"], row["age_peer_us"] = best_peer(
                cells, scenario, size, "age_p50_us", lowest=True
            )
            row["age_failed_peers"] = failed_peers(cells, scenario, size, "age_p50_us")
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


def _judged(target: dict[str, Any], *found: dict[str, Any] | None) -> dict[str, Any]:
    """`target`, not judged when a cell it rests on (`found`) ran disturbed."""
    noisy = disturbed(*found)
    if noisy and target["met"] is not None:
        target.update(
            met=None,
            disturbed=noisy,
            detail=f"{target['detail']}; not judged: disturbed runs (~) in {', '.join(noisy)}",
        )
    return target


def _peer_targets(cells: Cells, scenario: str, rated: str) -> list[dict[str, Any]]:
    """At every size of `scenario`: `rated` >= min(1.1x best peer, 0.95x the copy limit), or
    for a way that copies nothing >= 1.1x the best zero-copy peer (none ran: not measured)."""
    job, peers = peer_key(rated), peer_label(rated)
    zero_copy = rated in ZERO_COPY
    out = []
    for row in ratios(cells, scenario):
        size = row["size"]
        fps, best, peer = row.get(f"{rated}_fps"), row[f"best_{job}"], row[f"best_{job}_fps"]
        limit = None if zero_copy else row["copy_limit_fps"]
        limits = [v for v in (1.1 * peer if peer else None, 0.95 * limit if limit else None) if v]
        detail = f"{fmt_rate(fps)} vs best {peers} {fmt_peer(best, peer)}"
        bound = f"1.1x best {peers}"
        found = [find(cells, scenario, rated, size)]
        if not zero_copy:
            detail += f", {copy_limit_label(row['writers'])} {fmt_rate(limit)}"
            memcpy = "memcpy" if row["writers"] == 1 else f"{row['writers']}x memcpy"
            bound = f"min({bound}, 0.95x {memcpy})"
            found.append(find(cells, "limit", "memcpy-hot", size))
        name = f"{scenario}: {rated} frames/s at {size} >= {bound}"
        target = _at_least(name, fps, min(limits) if limits else None, detail)
        by_copy = bool(fps and limit and fps >= 0.95 * limit)  # met whatever the peers did
        failed = row[f"failed_{job}s"]
        if failed and not by_copy:  # a failed peer may be best
            target.update(met=None, detail=f"{detail}; not judged: {', '.join(failed)} failed")
        if not by_copy and best:
            found.append(find(cells, scenario, best, size))
        out.append(_judged(target, *found))
    return out


def _share_targets(
    cells: Cells, scenario: str, rated: str, key: str, base: tuple[str, str], share: float
) -> list[dict[str, Any]]:
    """`rated`'s `key` in `scenario` >= share x the base cell's fps (base: scenario,
    transport), at every size."""
    out = []
    for size in sizes(cells, scenario):
        mine, theirs = find(cells, scenario, rated, size), find(cells, base[0], base[1], size)
        have, ref = metric(mine, key), metric(theirs, "fps")
        target = _at_least(
            f"{scenario}: {rated} at {size} >= {share}x {base[0]} {base[1]}",
            have,
            share * ref if ref else None,
            f"{fmt_rate(have)} vs {fmt_rate(ref)}",
        )
        out.append(_judged(target, mine, theirs))
    return out


def _staleness_targets(cells: Cells) -> list[dict[str, Any]]:
    out = []
    for row in ratios(cells, LATEST_FRAME):
        size, age, peer = row["size"], row["age_us"], row["age_peer_us"]
        failed = row["age_failed_peers"]
        detail = f"{fmt_us(age)} vs {row['age_peer']} {fmt_us(peer)}"
        target = _target(
            f"latest: {LATEST} staleness p50 at {size} <= the best peer's",
            age,
            peer,
            None if age is None or peer is None or failed else age <= peer,
            f"{detail}; not judged: {', '.join(failed)} failed" if failed else detail,
        )
        theirs = find(cells, LATEST_FRAME, row["age_peer"], size) if row["age_peer"] else None
        out.append(_judged(target, find(cells, LATEST_FRAME, LATEST, size), theirs))
    return out


def targets(cells: Cells) -> list[dict[str, Any]]:
    """The issues' targets, each met / missed / not measured, with its numbers."""
    out: list[dict[str, Any]] = []
    for scenario in PEER_TARGET_TOPOLOGIES:
        if any(c["scenario"] == scenario for c in cells):
            out += _peer_targets(cells, scenario, WRITE)
        if any(c["scenario"] == scenario and c["transport"] == CLAIM for c in cells):
            out += _peer_targets(cells, scenario, CLAIM)
    main_sizes = sizes(cells)
    for name in (WRITE, CLAIM):
        reader = find(cells, MAIN, name, main_sizes[0]) if main_sizes else None
        idle = metric(reader, "idle_consumer_cores")
        target = _target(
            f"{name} idle reader < 1% of a core",
            idle,
            0.01,
            None if idle is None else idle < 0.01,
            f"{100 * idle:.3f}% of a core" if idle is not None else "not measured",
        )
        out.append(_judged(target, reader))
    if len(main_sizes) >= 2:
        first, last = (find(cells, MAIN, CLAIM, s) for s in (main_sizes[0], main_sizes[-1]))
        small, large = metric(first, "fps"), metric(last, "fps")
        target = _at_least(
            f"claim frames/s at {main_sizes[-1]} within 2x of {main_sizes[0]}",
            large / small if small and large else None,
            0.5,
            f"{fmt_rate(large)} vs {fmt_rate(small)}",
        )
        out.append(_judged(target, first, last))
    sleeper = next((c for c in cells if (c["scenario"], c["transport"]) == ("wake", SLEEP)), None)
    for pct in ("p50", "p99"):
        key = f"latency_{pct}_us"
        measured = [c for c in floors(cells) if metric(c, key)]
        kernel = min(measured, key=lambda c: metric(c, key) or 0.0, default=None)
        floor, have = metric(kernel, key), metric(sleeper, key)
        target = _target(
            f"blocked reader ({SLEEP}) wakes within 1.2x the kernel floor ({pct})",
            have,
            1.2 * floor if floor else None,
            None if not (floor and have) else have <= 1.2 * floor,
            f"{fmt_us(have)} vs floor {fmt_us(floor)}, 24-byte stamp",
        )
        out.append(_judged(target, sleeper, kernel))
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


def fmt_peer(name: str | None, fps: float | None) -> str:
    """A best peer and its rate; "—" when none was measured."""
    return f"{name} {fmt_rate(fps)}" if name else "—"


def fmt_us(us: float | None) -> str:
    if us is None:
        return "—"
    return f"{us / 1e3:.3g} ms" if us >= 1e3 else f"{us:.3g} µs"
