"""What unauthenticated connections cost the broker: peak RSS, and whether it is given back.

    python -m bench.preauth_memory [--connections 1300] [--line-bytes 1048576] [--held 2000]

Two phases against one `tcpmq serve`, RSS read from /proc before, during and
after each:

1. Slowloris, on the fresh server: `--held` connections are opened and held
   idle, then each sends max_auth_frame_bytes - 100 bytes without a newline
   (the most an unauthenticated line may hold): RSS growth / held is the
   cost of each, idle and at its peak.
2. Burst: `--connections` connections (spread over loopback source addresses
   so that max_connections_per_address does not refuse them) each send
   `--line-bytes` without a newline, then read until the server closes. The
   server refuses each line at max_auth_frame_bytes and discards the rest
   while it lingers. Run twice: a second burst that costs no more RSS than
   the first shows the memory is reused, not leaked.

Bounded: every connection has a timeout, and the whole run stops after
`--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tcpmq.config import Limits

from .__main__ import prepare_process
from .servers import SPECS, Server

MIB = 2**20


def source(index: int) -> str:
    """A loopback source address, 500 connections to each."""
    return f"127.0.1.{1 + index // 500}"


async def burst_one(port: int, index: int, line_bytes: int) -> bool:
    """Send a line that never ends; True if the server answered with an error and closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source(index), 0))
    try:
        chunk = b"x" * 65536
        sent = 0
        while sent < line_bytes:
            writer.write(chunk[: line_bytes - sent])
            sent += min(len(chunk), line_bytes - sent)
            await writer.drain()
        data = await reader.read()  # until the server's EOF
        return b"frame_too_large" in data
    except ConnectionError:
        return False
    finally:
        writer.close()


async def burst(server: Server, count: int, line_bytes: int) -> tuple[int, int]:
    """Run one burst; returns (peak RSS seen, connections answered)."""
    peak = [server.rss()]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.rss())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(
        *(burst_one(server.port, i, line_bytes) for i in range(count)),
        return_exceptions=True,
    )
    done.set()
    await sampler
    return peak[0], sum(1 for r in results if r is True)


async def slowloris(server: Server, count: int, line: int) -> None:
    """Hold `count` unauthenticated connections, idle and then with `line` bytes each."""
    start = server.rss()
    writers = []
    for index in range(count):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, local_addr=(source(index), 0)
        )
        await reader.readline()  # the greeting: it is admitted
        writers.append(writer)
    await asyncio.sleep(1.0)
    idle = server.rss()
    for writer in writers:
        writer.write(b"y" * line)
    for writer in writers:
        await writer.drain()
    await asyncio.sleep(1.0)  # let the server read what was sent
    held = server.rss()
    print(
        f"slowloris: {count} unauthenticated connections: idle "
        f"{(idle - start) / count / 1024:.1f} KiB each; holding {line} bytes of an "
        f"unterminated line {(held - start) / count / 1024:.1f} KiB each "
        f"(RSS +{(held - start) / MIB:.1f} MiB)"
    )
    for writer in writers:
        writer.close()


async def run(args: argparse.Namespace) -> None:
    auth_line = Limits().max_auth_frame_bytes
    with tempfile.TemporaryDirectory() as directory:
        server = Server(SPECS["tcpmq"], Path(directory) / "data", ("--store", "memory"))
        await server.start()
        try:
            async with asyncio.timeout(args.seconds):
                # First, on a fresh heap: what each one costs.
                await slowloris(server, args.held, auth_line - 100)
                await asyncio.sleep(1.0)
                before = server.rss()
                print(f"RSS before the bursts: {before / MIB:.1f} MiB")
                for attempt in (1, 2):
                    peak, answered = await burst(server, args.connections, args.line_bytes)
                    await asyncio.sleep(1.0)
                    after = server.rss()
                    print(
                        f"burst {attempt}: {args.connections} connections x "
                        f"{args.line_bytes / MIB:.1f} MiB without a newline: "
                        f"{answered} got frame_too_large; peak RSS {peak / MIB:.1f} MiB "
                        f"(+{(peak - before) / MIB:.1f}), after {after / MIB:.1f} MiB "
                        f"(+{(after - before) / MIB:.1f})"
                    )
        finally:
            print(f"server {'still up' if server.alive() else 'DIED'}")
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1300)
    parser.add_argument("--line-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--held", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    prepare_process()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
