"""The results: a table of medians (min-max), ratios against every peer, the goals, the machine.

All figures come from one run of the suite: each ratio divides two medians
measured in that run, on the same machine, with the same load generator.
The same Markdown is printed and, for a full run, written to bench/RESULTS.md.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .interference import OTHER_MAX, RETRIES
from .servers import SPECS, nats_binary, pin_prefix

# results[scenario][server][key]: one value per run
Results = dict[str, dict[str, dict[str, list[float]]]]


@dataclass(frozen=True, slots=True)
class Metric:
    scenario: str
    key: str
    label: str
    unit: str
    digits: int = 0


METRICS = [
    Metric("S1", "rate", "S1 1→1 deliveries/s", "/s"),
    Metric("S1", "cpu", "S1 load generator CPU", "%"),
    Metric("S1", "server_cpu", "S1 server CPU", "%"),
    Metric("S2", "rate", "S2 fan-out x8 deliveries/s", "/s"),
    Metric("S2", "cpu", "S2 load generator CPU", "%"),
    Metric("S2", "server_cpu", "S2 server CPU", "%"),
    Metric("S3", "p50", "S3 latency p50", "ms", 2),
    Metric("S3", "p99", "S3 latency p99", "ms", 2),
    Metric("S3", "max", "S3 latency max", "ms", 2),
    Metric("S4", "bytes_per_message", "S4 server RSS per queued message", "B"),
    Metric("S4", "restart", "S4 restart with the backlog", "s", 2),
    Metric("S5", "kib_per_connection", "S5 RSS per idle connection", "KiB", 1),
    Metric("S5", "active_rate", "S5 active connections, deliveries/s", "/s"),
    Metric("S5", "active_p99", "S5 active, publish→delivery p99", "ms", 2),
    Metric("S5", "active_errors", "S5 active, connections failed", ""),
    Metric("S5", "active_cpu", "S5 load generator CPU", "%"),
    Metric("S6", "one", "S6 acked publishes/s, 1 publisher", "/s"),
    Metric("S6", "many", "S6 acked publishes/s, 16 publishers", "/s"),
    Metric("S6", "scaling", "S6 16 publishers / 1", "x", 1),
    Metric("S6", "one_server_cpu", "S6 server CPU, 1 publisher", "%"),
    Metric("S6", "many_server_cpu", "S6 server CPU, 16 publishers", "%"),
]

# A throughput figure and the load generator's CPU share measured with it.
CPU_OF = {"rate": "cpu", "active_rate": "active_cpu"}
GENERATOR_BOUND = 0.9  # above this share of its core the generator may be the limit

# Ratios of tcpmq's medians to each peer's, for the figures where more is better.
RATIO_METRICS = [
    ("S1", "rate"),
    ("S2", "rate"),
    ("S5", "active_rate"),
    ("S6", "one"),
    ("S6", "many"),
]
PEERS = ["redis", "redis-aof", "nats", "nats-sync", "null"]
OURS = ["tcpmq", "tcpmq-never", "tcpmq-redis", "tcpmq-redis-mem", "tcpmq-redis-x2"]
# The shared Redis store against the Redis it stands on (same persistence),
# two nodes against one, and one node against the local log store.
STORE_PAIRS = [
    ("tcpmq-redis", "redis-aof"),
    ("tcpmq-redis-mem", "redis"),
    ("tcpmq-redis-x2", "tcpmq-redis"),
    ("tcpmq-redis", "tcpmq"),
]


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    scenario: str
    key: str
    server: str
    peer: str | None  # None: an absolute bound on the server's own figure
    at_least: bool
    bound: float


GOALS = [
    Goal("S1 durable ≥ 1.0x JetStream (file)", "S1", "rate", "tcpmq", "nats", True, 1.0),
    Goal(
        "S1 durable ≥ 0.75x Redis appendfsync always",
        "S1",
        "rate",
        "tcpmq",
        "redis-aof",
        True,
        0.75,
    ),
    Goal(
        "S1 --fsync never ≥ 0.5x Redis in-memory", "S1", "rate", "tcpmq-never", "redis", True, 0.5
    ),
    Goal("S1 --fsync never ≥ 0.5x null broker", "S1", "rate", "tcpmq-never", "null", True, 0.5),
    Goal("S1 durable ≥ 0.5x null broker", "S1", "rate", "tcpmq", "null", True, 0.5),
    Goal("S2 durable ≥ 1.0x JetStream (file)", "S2", "rate", "tcpmq", "nats", True, 1.0),
    Goal(
        "S2 --fsync never ≥ 0.5x Redis in-memory", "S2", "rate", "tcpmq-never", "redis", True, 0.5
    ),
    Goal("S3 durable p99 ≤ 1.0 ms", "S3", "p99", "tcpmq", None, False, 1.0),
    Goal("S3 durable max ≤ 10 ms", "S3", "max", "tcpmq", None, False, 10.0),
    Goal(
        "S4 ≤ 250 B per queued message (durable)",
        "S4",
        "bytes_per_message",
        "tcpmq",
        None,
        False,
        250,
    ),
    Goal(
        "S4 ≤ 250 B per queued message (never)",
        "S4",
        "bytes_per_message",
        "tcpmq-never",
        None,
        False,
        250,
    ),
    Goal("S4 durable restart with the backlog ≤ 5 s", "S4", "restart", "tcpmq", None, False, 5.0),
    Goal("S5 ≤ 20 KiB per idle connection", "S5", "kib_per_connection", "tcpmq", None, False, 20.0),
    Goal("S5 active connections: no error", "S5", "active_errors", "tcpmq", None, False, 0.0),
    Goal("S5 active connections: p99 ≤ 20 ms", "S5", "active_p99", "tcpmq", None, False, 20.0),
    Goal("S6 durable: 16 publishers ≥ 8x one", "S6", "scaling", "tcpmq", None, True, 8.0),
    Goal(
        "S6 durable ≥ 1.0x Redis appendfsync always", "S6", "many", "tcpmq", "redis-aof", True, 1.0
    ),
]


def median(results: Results, scenario: str, server: str, key: str) -> float | None:
    values = results.get(scenario, {}).get(server, {}).get(key)
    return statistics.median(values) if values else None


def _number(value: float, metric: Metric) -> str:
    if math.isnan(value):
        return "n/a"
    if metric.unit == "%":
        return f"{value * 100:.0f}%"
    return f"{value:,.{metric.digits}f}"


def _cell(values: list[float] | None, metric: Metric, failed: bool) -> str:
    if not values:
        return "failed" if failed else "—"
    mid = _number(statistics.median(values), metric)
    if len(values) == 1:
        return mid
    return f"{mid} ({_number(min(values), metric)}-{_number(max(values), metric)})"


def results_table(results: Results, failures: dict[str, set[str]], servers: list[str]) -> str:
    lines = ["| figure | unit | " + " | ".join(servers) + " |"]
    lines.append("|---|---|" + "---:|" * len(servers))
    for metric in METRICS:
        by_server = results.get(metric.scenario)
        if by_server is None and metric.scenario not in failures:
            continue
        cells = []
        for server in servers:
            figures = (by_server or {}).get(server, {})
            failed = server in failures.get(metric.scenario, set())
            cell = _cell(figures.get(metric.key), metric, failed)
            cpu = figures.get(CPU_OF.get(metric.key, ""))
            if cpu and statistics.median(cpu) >= GENERATOR_BOUND:
                cell += " †"
            if any(load > OTHER_MAX for load in figures.get("other_load", [])):
                cell += " ‡"
            cells.append(cell)
        unit = "" if metric.unit == "%" else metric.unit
        lines.append(f"| {metric.label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(results: Results, servers: list[str]) -> str:
    peers = [peer for peer in PEERS if peer in servers]
    ours = [name for name in OURS if name in servers]
    if not peers or not ours:
        return "(no peer and tcpmq server both in this run)"
    label = {(m.scenario, m.key): m.label for m in METRICS}
    lines = ["| figure | tcpmq | " + " | ".join(f"÷ {peer}" for peer in peers) + " |"]
    lines.append("|---|---|" + "---:|" * len(peers))
    for scenario, key in RATIO_METRICS:
        for name in ours:
            mine = median(results, scenario, name, key)
            if mine is None:
                continue
            cells = []
            for peer in peers:
                theirs = median(results, scenario, peer, key)
                cells.append(f"{mine / theirs:.2f}x" if theirs else "—")
            lines.append(f"| {label[(scenario, key)]} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def store_table(results: Results, servers: list[str]) -> str:
    """The pairs of STORE_PAIRS measured in this run, one column each; empty if none."""
    pairs = [(mine, theirs) for mine, theirs in STORE_PAIRS if {mine, theirs} <= set(servers)]
    if not pairs:
        return ""
    label = {(m.scenario, m.key): m.label for m in METRICS}
    lines = ["| figure | " + " | ".join(f"{mine} ÷ {theirs}" for mine, theirs in pairs) + " |"]
    lines.append("|---|" + "---:|" * len(pairs))
    for scenario, key in RATIO_METRICS:
        cells = []
        for mine, theirs in pairs:
            a = median(results, scenario, mine, key)
            b = median(results, scenario, theirs, key)
            cells.append(f"{a / b:.2f}x" if a is not None and b else "—")
        if any(cell != "—" for cell in cells):
            lines.append(f"| {label[(scenario, key)]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _store_section(results: Results, servers: list[str]) -> str:
    table = store_table(results, servers)
    if not table:
        return ""
    return f"""
## The shared Redis store (ratio of medians, more is better)

tcpmq-redis* against the Redis peer with the same persistence (whose lists
do no acknowledgement), two nodes against one, one node against the log
store. Their CPU and RSS figures include the redis-server under them.

{table}
"""


def goal_table(results: Results) -> str:
    lines = ["| goal | measured | |", "|---|---:|---|"]
    for goal in GOALS:
        mine = median(results, goal.scenario, goal.server, goal.key)
        theirs = median(results, goal.scenario, goal.peer, goal.key) if goal.peer else 1.0
        if mine is None or not theirs or math.isnan(mine):
            lines.append(f"| {goal.text} | not measured | |")
            continue
        value = mine / theirs
        met = value >= goal.bound if goal.at_least else value <= goal.bound
        if goal.peer or goal.key == "scaling":
            shown = f"{value:.2f}x"
        else:
            metric = next(m for m in METRICS if (m.scenario, m.key) == (goal.scenario, goal.key))
            shown = f"{_number(value, metric)} {metric.unit}".rstrip()
        lines.append(f"| {goal.text} | {shown} | {'met' if met else '**missed**'} |")
    return "\n".join(lines)


def interference_note(results: Results) -> str:
    """How busy other processes were during the kept measurements, and how many were redone."""
    loads: list[float] = []
    repeats = 0
    for by_server in results.values():
        for figures in by_server.values():
            loads += figures.get("other_load", [])
            repeats += int(sum(figures.get("repeats", [])))
    if not loads:
        return ""
    return (
        f"Other processes on the machine took {statistics.median(loads):.2f} cores "
        f"(median; at most {max(loads):.2f}) during the measurements kept, "
        f"S4 not counted; {repeats} measurement(s) were done again because "
        f"they took more than {OTHER_MAX:.2f} (see bench/interference.py)."
    )


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not found"
    output = (done.stdout or done.stderr).strip()
    return output.splitlines()[0] if output else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def environment() -> list[str]:
    """The versions and the machine, as Markdown list items."""
    root = Path(__file__).resolve().parent.parent
    commit = _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    changed = _run(["git", "-C", str(root), "status", "--porcelain", "--", "src"])
    tree = "with uncommitted changes in src/" if changed else "src/ as committed"
    nats = nats_binary()
    redis = shutil.which("redis-server")

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"tcpmq {version('tcpmq')} (commit {commit}, {tree}), "
        f"Python {platform.python_version()}, uvloop {version('uvloop')}, "
        f"orjson {version('orjson')}",
        f"Redis: {_run([redis, '--version']) if redis else 'not found'}",
        f"NATS: {_run([nats, '--version']) if nats else 'not found'}",
        f"Machine: `{_run(['uname', '-a'])}`",
        f"CPU: {_cpu_model()}, {os.cpu_count()} cores; memory {_memory()}",
        "Pinning: "
        + (
            "each server under `taskset -c 0`, the load generator on core 1"
            if pin_prefix()
            else "none (fewer than two cores)"
        ),
    ]


def render(
    results: Results,
    failures: dict[str, set[str]],
    servers: list[str],
    command: str,
    runs: int,
    sizes: str,
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    described = "\n".join(f"- `{name}`: {SPECS[name].label}" for name in servers)
    return f"""# Benchmark results

    {command}

Run on {when}: every scenario {runs} time(s) against every server, with a
fresh server and data directory each time. Cells are the median (min-max) of
the runs; ratios divide the medians of this run. How each scenario is
measured: bench/__init__.py and bench/scenarios.py.

Sizes: {sizes}.

{chr(10).join(f"- {item}" for item in environment())}

Servers:

{described}

## Figures

{results_table(results, failures, servers)}

† The load generator's core was at least {GENERATOR_BOUND:.0%} busy: the
server may be faster than this figure. ‡ Some run was still disturbed by
other processes (more than {OTHER_MAX:.2f} cores) after {RETRIES} repeats.

{interference_note(results)}

## tcpmq against each peer (ratio of medians, more is better)

{ratio_table(results, servers)}
{_store_section(results, servers)}
## Goals

{goal_table(results)}
"""


def command_line() -> str:
    return " ".join(["bench/run", *sys.argv[1:]])
