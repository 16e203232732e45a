"""Run the benchmark suite against every server; print the results, and keep a full run's.

The load generator pins itself to core 1 and raises its open-files limit
(inherited by the servers it starts), then runs every scenario `--runs` times
against every server, interleaving the servers within each run so that drift
in the machine touches them all alike. A measurement that fails or exceeds its
timeout is reported as failed and the suite goes on. A full run (no
`--quick`, `--only` or `--servers`) writes bench/RESULTS.md; `--output` writes
any run's results to another file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import uvloop

from . import report
from .interference import OTHER_MAX, RETRIES, OtherLoad, wait_quiet
from .peers import peer_for
from .scenarios import QUICK, SCENARIOS, SKIP, TIMEOUTS, Figures, Sizes
from .servers import SPECS, Server, available

# Scenarios that restart their server: the other load cannot be told from ours.
RESTARTS = {"S4"}

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOFILE = 65536  # S5 opens 5,000 connections; both ends need a descriptor each


def _names(value: str, known: list[str], what: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (3; quick 1)")
    parser.add_argument(
        "--only",
        type=lambda v: _names(v.upper(), list(SCENARIOS), "scenario"),
        default=list(SCENARIOS),
        help="comma-separated scenarios (default all: S1,...,S6)",
    )
    parser.add_argument(
        "--servers",
        type=lambda v: _names(v, list(SPECS), "server"),
        default=list(SPECS),
        help=f"comma-separated servers (default all: {','.join(SPECS)})",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--store-url",
        default=None,
        metavar="URL",
        help="put the tcpmq-redis servers' nodes on this store (a redis:// URL; each "
        "server gets a fresh prefix= and leaves its keys there) instead of a "
        "redis-server of their own; 'memory' or 'log' check the harness alone",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    full = not args.quick and args.only == list(SCENARIOS) and args.servers == list(SPECS)
    full = full and args.store_url is None
    if args.output is None and full:
        args.output = RESULTS
    return args


def prepare_process() -> None:
    """Core 1 for the load generator (core 0 is the servers'), and file descriptors enough."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _summary(figures: Figures) -> str:
    return ", ".join(f"{key} {value:,.2f}" for key, value in figures.items())


async def measure_once(
    name: str, spec_name: str, sizes: Sizes, directory: Path, store_url: str | None
) -> Figures:
    """One measurement on a fresh server; `other_load` is what other processes took meanwhile."""
    server = Server(SPECS[spec_name], directory, store_url=store_url)
    try:
        await server.start()
        load = OtherLoad()
        load.start(*server.pids)
        figures = await asyncio.wait_for(
            SCENARIOS[name](server, peer_for(server), sizes), TIMEOUTS[name]
        )
        if name not in RESTARTS:  # a restarted server is another process: not counted as ours
            figures["other_load"] = load.stop()
        return figures
    except TimeoutError:
        raise TimeoutError(f"no result within {TIMEOUTS[name]:.0f} s") from None
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def measure(
    name: str, spec_name: str, sizes: Sizes, directory: Path, label: str, store_url: str | None
) -> Figures:
    """Measure in a quiet moment; again (a bounded number of times) if others were busy."""
    for attempt in range(RETRIES + 1):
        await wait_quiet()
        figures = await measure_once(name, spec_name, sizes, directory, store_url)
        other = figures.get("other_load", 0.0)
        if other <= OTHER_MAX or attempt == RETRIES:
            figures["repeats"] = attempt
            return figures
        print(f"{label}: other processes used {other:.2f} cores meanwhile; again", flush=True)
    raise AssertionError("unreachable")


async def run(args: argparse.Namespace) -> int:
    # Stop on SIGINT or SIGTERM by cancelling: every server is stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    sizes = QUICK if args.quick else Sizes()
    servers = []
    for name in args.servers:
        if available(SPECS[name]):
            servers.append(name)
        else:
            print(f"bench: {name} is not installed; skipped (bench/run installs it)")
    results: report.Results = {}
    failures: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory(prefix="tcpmq-bench-") as tmp:
        for scenario in args.only:
            for run_index in range(args.runs):
                for name in servers:
                    if name in SKIP.get(scenario, set()):
                        continue
                    where = Path(tmp) / f"{scenario}-{run_index}-{name}"
                    label = f"{scenario} run {run_index + 1}/{args.runs} {name}"
                    try:
                        figures = await measure(scenario, name, sizes, where, label, args.store_url)
                    except Exception as exc:
                        failures.setdefault(scenario, set()).add(name)
                        print(f"{label}: FAILED: {exc}", flush=True)
                        if not isinstance(exc, TimeoutError):
                            traceback.print_exc()
                        continue
                    print(f"{label}: {_summary(figures)}", flush=True)
                    per_server = results.setdefault(scenario, {}).setdefault(name, {})
                    for key, value in figures.items():
                        per_server.setdefault(key, []).append(value)
    sized = ", ".join(f"{f.name} {getattr(sizes, f.name):,}" for f in dataclasses.fields(sizes))
    text = report.render(
        results, failures, servers, report.command_line(), args.runs, sized.replace("_", " ")
    )
    print()
    print(text)
    if args.output is not None:
        args.output.write_text(text)
        print(f"written to {args.output}")
    return 1 if failures else 0


def main() -> None:
    args = parse_args()
    prepare_process()
    try:
        sys.exit(uvloop.run(run(args)))
    except asyncio.CancelledError:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
