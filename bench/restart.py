"""How long does the durable store take to start with a large backlog?

Fills a fresh data dir with N queued 100-byte messages (one channel, one
queue, nobody consuming) through a real server, stops it, then times a
`tcpmq serve` process from launch to its "listening" line, several times,
and prints the median, min and max with the store's size on disk and the
server's resident memory after the restart.

    python bench/restart.py [--messages 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tcpmq.client import connect
from tcpmq.config import ServerConfig
from tcpmq.server import Server

PASSWORD = "bench-restart-password"
PAYLOAD = "x" * 98  # 100 bytes as JSON
READY = re.compile(rb"tcpmq listening on \S+:\d+")


async def fill(data_dir: Path, messages: int) -> None:
    server = Server(ServerConfig(port=0, data_dir=data_dir), admin_password=PASSWORD)
    await server.start()
    try:
        url = f"tcpmq://127.0.0.1:{server.port}"
        async with connect(url, token=server.mint_token("admin")) as client:
            await client.channel_create("backlog")
            await client.subscribe("backlog", queue="idle")
            sent = 0
            while sent < messages:
                count = min(1000, messages - sent)
                await client.publish_batch("backlog", [PAYLOAD] * count)
                sent += count
    finally:
        await server.stop()


async def time_start(data_dir: Path) -> tuple[float, int]:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcpmq",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log = b""
    try:
        while not READY.search(log):
            line = await asyncio.wait_for(process.stderr.readline(), 120)
            if not line:
                raise RuntimeError(f"server exited: {log.decode()}")
            log += line
        elapsed = time.perf_counter() - started
        rss = _rss_bytes(process.pid)
    finally:
        process.terminate()
        await process.wait()
    return elapsed, rss


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        began = time.perf_counter()
        await fill(data_dir, args.messages)
        print(f"filled {args.messages:,} messages in {time.perf_counter() - began:.1f} s")
        _, empty_rss = await time_start(Path(tmp) / "empty")
        times, rss = [], 0
        for _ in range(args.runs):
            elapsed, rss = await time_start(data_dir)
            times.append(elapsed)
        print(
            f"restart with {args.messages:,} queued: median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, {args.runs} runs)"
        )
        print(f"store on disk: {_disk_bytes(data_dir / 'store') / 1e6:.1f} MB")
        per_message = (rss - empty_rss) / args.messages
        print(f"server RSS after restart: {rss / 1e6:.1f} MB ({per_message:.0f} B per message)")
        print(f"cpu: {os.cpu_count()} cores")


if __name__ == "__main__":
    asyncio.run(main())
