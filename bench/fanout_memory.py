"""How much memory does fan-out cost the broker, and does `max_memory_bytes` bound it?

The attack: one channel with many queues, and batches of tiny messages
(`[1,1,1,...]`, 2 bytes each on the wire), so that every byte published
becomes a queue slot per queue. Starts a `tcpmq serve` process, subscribes
`--queues` queues, publishes until `--publish-mib` MiB of publish requests
were sent or the server refuses (then prints why), optionally pulls one
batch per queue or everything (in flight: an `Entry` per message per queue,
the most a message costs), and prints the server's resident memory (VmRSS)
after each step. Bounded: at most `--publish-mib` of requests, and what was
published to pull.

    python bench/fanout_memory.py [--queues 1000] [--publish-mib 1.1]
        [--pull | --pull-all] [--max-memory-mib N] [--store log|memory]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from tcpmq.client import connect
from tcpmq.config import Limits
from tcpmq.errors import TcpmqError

PASSWORD = "bench-fanout-password"
READY = re.compile(rb"tcpmq listening on (\S+):(\d+)")
BATCH = 1000
MESSAGE = 1  # `1`: 2 bytes per message in a batch on the wire, with its comma


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match[1]) / 1024


async def run(args: argparse.Namespace, data_dir: Path) -> None:
    flags = ["--max-queues-per-channel", str(max(args.queues, 1000))]
    if "max_queues_per_user" in Limits.__dataclass_fields__:  # older servers lack it
        flags += ["--max-queues-per-user", str(max(args.queues, 100))]
    if args.max_memory_mib is not None:
        flags += ["--max-memory-bytes", str(int(args.max_memory_mib * 1024 * 1024))]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcpmq",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--store",
        args.store,
        "--fsync",
        "never",
        *flags,
        stderr=asyncio.subprocess.PIPE,
        # PYTHONPATH passes on, to measure another version of the server.
        env={"TCPMQ_ADMIN_PASSWORD": PASSWORD, **_passed_on("PATH", "PYTHONPATH")},
    )
    assert process.stderr is not None
    log = b""
    while (match := READY.search(log)) is None:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line, log.decode()
        log += line
    drain = asyncio.ensure_future(_discard(process.stderr))
    url = f"tcpmq://{match[1].decode()}:{match[2].decode()}"
    try:
        async with connect(url, user="admin", password=PASSWORD) as client:
            await client.channel_create("fan")
            for i in range(args.queues):
                await client.subscribe("fan", queue=f"q{i}")
            print(f"{args.queues} queues: RSS {rss_mib(process.pid):.0f} MiB")
            budget = int(args.publish_mib * 1024 * 1024)
            sent = published = 0
            started = time.perf_counter()
            refusal = "none"
            while sent < budget:
                try:
                    await client.publish_batch("fan", [MESSAGE] * BATCH)
                except TcpmqError as exc:
                    refusal = f"{exc.code}: {exc.details or exc.message}"
                    break
                sent += 2 * BATCH + 40  # the batch's request line, near enough
                published += BATCH
            elapsed = time.perf_counter() - started
            print(
                f"published {published} messages ({sent / 1048576:.2f} MiB of requests) "
                f"to {args.queues} queues in {elapsed:.1f} s; refused: {refusal}; "
                f"RSS {rss_mib(process.pid):.0f} MiB"
            )
            if args.pull or args.pull_all:
                # In flight, each message of each queue is an Entry: the most it costs.
                pulled = 0
                for i in range(args.queues):
                    while batch := await client.pull("fan", queue=f"q{i}", max=1000):
                        pulled += len(batch)
                        if not args.pull_all:
                            break
                print(f"pulled {pulled} (in flight, unacked): RSS {rss_mib(process.pid):.0f} MiB")
    finally:
        process.terminate()
        await process.wait()
        drain.cancel()


def _passed_on(*names: str) -> dict[str, str]:
    return {name: os.environ[name] for name in names if name in os.environ}


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--publish-mib", type=float, default=1.1)
    parser.add_argument("--pull", action="store_true", help="pull up to 1000 per queue")
    parser.add_argument("--pull-all", action="store_true", help="pull every message")
    parser.add_argument("--max-memory-mib", type=float, default=None)
    parser.add_argument("--store", choices=["log", "memory"], default="log")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp) / "data"))


if __name__ == "__main__":
    main()
