"""What Redis itself costs per operation on this machine, for the shared store's access pattern.

    python -m bench.redis_ceiling [--requests 500000] [--clients 16] [--pipelines 1,64]

Starts a redis-server pinned to core 0 (as bench does: free loopback port,
temporary directory), once with `appendfsync always` and once in memory, and
runs `redis-benchmark` pinned to core 1 for LPUSH, RPOP, ZADD and EVALSHA of a
trivial script, 100-byte values. For each it prints the ops/s the client saw,
the server's own `usec_per_call` (INFO commandstats, reset before each run:
the command alone), the CPU Redis spent per operation in all (reading,
parsing, replying, writing the AOF: its CPU time over the run / requests),
the ceiling that allows (1e6 / that: one core doing nothing else) and the
share of its core Redis used. A message through the redis store costs a few
such calls (see docs/redis-design.md): the sum of their CPU per operation
bounds what any number of tcpmq nodes can get from one Redis core. The
trivial script writes nothing, so it never waits for an fsync, unlike a
script of the store's.  Every run is bounded by its request count and a timeout;
the redis-server is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from .interference import process_cpu
from .servers import REDIS_READY, Process, free_port, pin_prefix, redis_command

VALUE = "x" * 100  # the payload size of the bench's scenarios
TRIVIAL_SCRIPT = "return 1"
RUN_TIMEOUT = 300.0  # seconds one redis-benchmark run may take at most


@dataclass(frozen=True, slots=True)
class Row:
    persistence: str
    command: str
    pipeline: int
    ops: float  # per second, as redis-benchmark saw them
    usec_per_call: float  # the server's own time per call, in the command
    cpu_per_op: float  # microseconds of Redis CPU per request, all its work
    redis_cpu: float  # share of its core over the run


def _usec_per_call(stats: dict[str, dict[str, float]], command: str) -> float:
    entry = stats.get(command.lower()) or stats.get(f"cmdstat_{command.lower()}") or {}
    return float(entry.get("usec_per_call", float("nan")))


def _benchmark_command(port: int, requests: int, clients: int, pipeline: int) -> list[str]:
    """redis-benchmark on the load generator's core (core 1 when there are two)."""
    pin = ["taskset", "-c", "1"] if pin_prefix() else []
    return [
        *pin,
        "redis-benchmark",
        "-p",
        str(port),
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-P",
        str(pipeline),
        "-r",
        "100000000",  # the range of __rand_int__ (ZADD scores and members)
        "--csv",
    ]


async def _run_benchmark(command: list[str]) -> float:
    """Run one redis-benchmark (bounded by RUN_TIMEOUT); its requests per second."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {err.decode(errors='replace')[-500:]}")
    rows = list(csv.reader(io.StringIO(out.decode())))
    if len(rows) < 2:
        raise RuntimeError(f"redis-benchmark printed no result: {out[-500:]!r}")
    return float(rows[1][1])  # "test","rps",...


async def measure_mode(
    persistence: str, requests: int, clients: int, pipelines: list[int]
) -> list[Row]:
    """Every command at every pipeline depth against one fresh redis-server."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tcpmq-redis-ceiling-") as directory:
        port = free_port()
        server = Process(f"redis-server ({persistence})")
        try:
            await server.start(
                redis_command(port, Path(directory), persistence, None),
                REDIS_READY,
                dict(os.environ),
            )
            client = aioredis.Redis(port=port)
            try:
                sha = await client.script_load(TRIVIAL_SCRIPT)
                commands = {
                    # RPOP right after LPUSH: it pops what LPUSH pushed, never an empty list.
                    "LPUSH": ["LPUSH", "bench:list", VALUE],
                    "RPOP": ["RPOP", "bench:list"],
                    "ZADD": ["ZADD", "bench:zset", "__rand_int__", "__rand_int__"],
                    "EVALSHA": ["EVALSHA", sha, "1", "bench:key"],
                }
                for pipeline in pipelines:
                    for name, args in commands.items():
                        await client.config_resetstat()
                        cpu, started = process_cpu(server.pid), time.perf_counter()
                        command = _benchmark_command(port, requests, clients, pipeline)
                        ops = await _run_benchmark([*command, *args])
                        elapsed = time.perf_counter() - started
                        cpu = process_cpu(server.pid) - cpu
                        stats = await client.info("commandstats")
                        usec = _usec_per_call(stats, name)
                        per_op = cpu * 1e6 / requests
                        row = Row(persistence, name, pipeline, ops, usec, per_op, cpu / elapsed)
                        print(_format(row), flush=True)
                        rows.append(row)
            finally:
                await client.aclose()
        finally:
            await server.stop()
    return rows


HEADER = (
    "| Redis | command | pipeline | ops/s (client) | usec_per_call (command) "
    "| Redis CPU µs/op (all) | ceiling ops/s | Redis CPU |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|"
)


def _format(row: Row) -> str:
    ceiling = 1e6 / row.cpu_per_op if row.cpu_per_op > 0 else float("nan")
    return (
        f"| {row.persistence} | {row.command} | {row.pipeline} | {row.ops:,.0f} "
        f"| {row.usec_per_call:.2f} | {row.cpu_per_op:.2f} | {ceiling:,.0f} "
        f"| {row.redis_cpu:.0%} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.redis_ceiling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=500_000, help="per command and depth")
    parser.add_argument("--clients", type=int, default=16, help="redis-benchmark connections")
    parser.add_argument(
        "--pipelines",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 64],
        help="comma-separated pipeline depths (default 1,64)",
    )
    parser.add_argument(
        "--persistence",
        type=lambda v: v.split(","),
        default=["always", "memory"],
        help="always (AOF, appendfsync always) and/or memory (default both)",
    )
    args = parser.parse_args(argv)
    if any(mode not in ("always", "memory") for mode in args.persistence):
        parser.error("--persistence takes always and/or memory")
    if args.requests <= 0 or args.requests > 10_000_000:
        parser.error("--requests must be 1..10,000,000")
    return args


async def run(args: argparse.Namespace) -> None:
    print(HEADER, flush=True)
    for persistence in args.persistence:
        await measure_mode(persistence, args.requests, args.clients, args.pipelines)
    print(
        f"\n{args.requests:,} requests per row, {args.clients} clients, 100-byte values; "
        "EVALSHA runs `return 1` (its usec_per_call is the cost of calling any script)."
    )


def main() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        sys.exit("bench.redis_ceiling: redis-server and redis-benchmark are needed")
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
