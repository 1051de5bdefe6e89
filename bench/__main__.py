# `python -m bench`: run the benchmark suite, write JSON + markdown + plots, print the ratios.
#
# Rules: the default run is the full suite (every transport in every topology it takes part in,
# the five default sizes, 3 undisturbed repeats per cell; about 25 minutes on 2 cores, 40 or
# more with --repeats 5; then ~3 minutes of asyncio cells per repeat, the kinds interleaved
# in each round, since single asyncio runs swing by 2x with the readers' pacing). --quick is
# the smoke-test mode (tiny durations, one repeat). Transports whose library cannot be
# imported are reported as skipped with the reason. Outputs go to bench/results/
# (gitignored); --readme also writes docs/performance.md and docs/img/*.png, which are
# committed for the README, and refuses a run that leaves part of the suite or a peer out.
# --from-json re-renders the reports of an earlier run without measuring again.
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import async_reader, report
from bench.cell import Timing
from bench.cpu import machine_info
from bench.frames import DEFAULT_SIZES, parse_size
from bench.suite import SCENARIOS, Plan, available, run_plan
from bench.transports import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--sizes", default=",".join(DEFAULT_SIZES), help="bytes (4096, 64KiB) or WxHxC, comma list"
    )
    p.add_argument("--transports", default=",".join(REGISTRY), help="comma list (see --list)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of scenarios")
    p.add_argument("--quick", action="store_true", help="tiny durations, 1 repeat (smoke test)")
    p.add_argument("--repeats", type=int, help="undisturbed runs per cell (default 3; quick 1)")
    p.add_argument("--max-extra", type=int, default=3, help="extra runs for disturbed cells")
    p.add_argument("--duration", type=float, help="seconds measured per throughput run")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per throughput run")
    p.add_argument(
        "--noise-threshold",
        type=float,
        default=0.15,
        help="cores used by other processes above which a run counts as disturbed",
    )
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=120.0,
        help="seconds the whole run may wait for other processes to go quiet",
    )
    p.add_argument(
        "--extra-budget",
        type=float,
        default=300.0,
        help="seconds the whole run may spend re-running disturbed runs",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--readme", action="store_true", help="also write docs/performance.md + PNGs")
    p.add_argument("--from-json", type=Path, help="re-render an earlier results.json")
    p.add_argument("--list", action="store_true", help="list transports and whether they import")
    p.add_argument(
        "--asyncio",
        choices=("on", "off"),
        help="also run bench.async_reader (the asyncio reader against the blocking one and "
        "the asyncio peers, at the sizes of bench.async_reader); default on, off with --quick",
    )
    return p


def _plan(args: argparse.Namespace) -> tuple[Plan, dict[str, str]]:
    names = [n.strip() for n in args.transports.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    if unknown or set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown transports/scenarios: {unknown} {scenarios}")
    timing = Timing().quick() if args.quick else Timing()
    if args.duration is not None:
        timing = replace(timing, duration_s=args.duration)
    if args.warmup is not None:
        timing = replace(timing, warmup_s=args.warmup)
    ok, skipped = available(names)
    try:
        sizes = tuple(parse_size(s) for s in args.sizes.split(",") if s.strip())
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    plan = Plan(
        sizes=sizes,
        transports=ok,
        scenarios=scenarios,
        timing=timing,
        repeats=args.repeats or (1 if args.quick else 3),
        max_extra=0 if args.quick else args.max_extra,
        noise_threshold=args.noise_threshold,
        pin=not args.no_pin,
        quiet_budget_s=0.0 if args.quick else args.quiet_budget,
        extra_budget_s=args.extra_budget,
    )
    return plan, skipped


def _measure(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    plan, skipped = _plan(args)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", flush=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    cells = run_plan(plan, log=lambda line: print(line, flush=True))
    extra: dict[str, Any] = {}
    if (args.asyncio or ("off" if args.quick else "on")) == "on":
        sizes = [parse_size(s) for s in async_reader.SIZES]
        extra["async_reader"] = {
            "sizes": [s.label for s in sizes],
            "repeats": plan.repeats,
            "rows": async_reader.measure(
                sizes,
                [*async_reader.SHMRING, *async_reader.PEERS],
                lambda line: print(line),
                repeats=plan.repeats,
            ),
        }
    return {
        "meta": {
            "command": shlex.join(["python", "-m", "bench", *argv]),
            "started": started,
            "duration_s": time.perf_counter() - t0,
            "machine": machine_info(),
            "timing": asdict(plan.timing),
            "repeats": plan.repeats,
            "noise_threshold": plan.noise_threshold,
            "pin": plan.pin,
            "sizes": [s.label for s in plan.sizes],
        },
        "skipped": skipped,
        "cells": cells,
        **extra,
    }


def _refuse_partial(args: argparse.Namespace, skipped: dict[str, str]) -> None:
    """--readme publishes docs/performance.md, the comparison of the whole suite with every
    peer: refuse a run that leaves any of it out (before measuring, when it is to come)."""
    narrowed = [
        f"--{option}"
        for option in ("sizes", "transports", "scenarios")
        if getattr(args, option) != _parser().get_default(option)
    ]
    if narrowed:
        raise SystemExit(
            f"--readme publishes the whole suite: run it without {', '.join(narrowed)}"
        )
    if skipped:
        raise SystemExit(
            "--readme publishes the comparison with every peer, and these cannot run: "
            + "; ".join(f"{name} ({reason})" for name, reason in skipped.items())
            + ". Install them (pip install -e '.[bench,async]', as `make bench` does), or "
            "run without --readme"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.list:
        for name in REGISTRY:
            _, skipped = available([name])
            print(f"{name:<16} {skipped.get(name, 'ok')}")
        return 0
    if args.readme and not args.from_json:
        _refuse_partial(args, _plan(args)[1])
    results = json.loads(args.from_json.read_text()) if args.from_json else _measure(args, argv)
    if args.readme and args.from_json:
        _refuse_partial(args, results.get("skipped", {}))
    written = report.write(results, args.out)
    if args.readme:
        written.update(
            {f"docs {k}": p for k, p in report.write_docs(results, ROOT / "docs").items()}
        )
    print(report.console_summary(results))
    if note := results["meta"].get("plots"):
        print(note)
    for what, path in written.items():
        print(f"wrote {what}: {path}")
    return 1 if any(c["status"] != "ok" for c in results["cells"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
