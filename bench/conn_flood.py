"""What a legitimate client sees while one address floods the broker with connections.

    python -m bench.conn_flood [--seconds 30] [--sockets 10000] [--per-address N]

A flood from 127.0.0.1 opens `--sockets` connections within `--ramp` seconds
and re-opens each one every `--period` seconds (closing the old one), sending
nothing: what a connection flood or a slowloris does. Meanwhile a client
from another loopback address, 127.0.0.2, tries every `--every` seconds to
connect, read the greeting and get a reply to a `ping`, each try with a
`--timeout`. It prints how many tries were greeted, their latency, what the
flood got (greeted, refused with `bye`, failed) and the server's RSS and CPU.

`--per-address` sets the server's max_connections_per_address (default: the
server's default); pass 20000 to see the broker without that cap. The
run is bounded: it stops after `--seconds` however the server fares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from tcpmq.config import Limits

from .__main__ import prepare_process
from .servers import SPECS, Server

FLOOD_SOURCE = "127.0.0.1"  # the destination too: the kernel then connects from it
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
CLIENT_SOURCE = "127.0.0.2"


@dataclass
class Tally:
    tries: int = 0
    greeted: int = 0
    latencies: list[float] = field(default_factory=list)
    flood_greeted: int = 0
    flood_refused: int = 0
    flood_failed: int = 0
    flood_opened: int = 0


class FloodSocket(asyncio.Protocol):
    """One flood connection: reads its first line to count it, sends nothing."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.seen = b""
        self.counted = False

    def data_received(self, data: bytes) -> None:
        if self.counted:
            return
        self.seen += data
        if b"\n" in self.seen:
            self.counted = True
            if self.seen.startswith(b'{"event":"hello"'):
                self.tally.flood_greeted += 1
            else:
                self.tally.flood_refused += 1


async def flood_slot(
    server: Server, tally: Tally, start: float, period: float, until: float
) -> None:
    """One socket of the flood: open at `start`, re-open every `period` until `until`."""
    loop = asyncio.get_running_loop()
    at = start
    while at < until:
        await asyncio.sleep(max(0.0, at - loop.time()))
        transport: asyncio.BaseTransport | None = None
        try:
            transport, _ = await asyncio.wait_for(
                # Unbound: the kernel picks its port at connect, which reuses
                # ports in TIME_WAIT; bind(port 0) would scan and run out of
                # them, a limit of this client and not of the server.
                loop.create_connection(lambda: FloodSocket(tally), FLOOD_SOURCE, server.port),
                period,
            )
            tally.flood_opened += 1
        except (OSError, TimeoutError):
            tally.flood_failed += 1
        at += period
        # Held (sending nothing) until it is re-opened or the run ends.
        await asyncio.sleep(max(0.0, min(at, until) - loop.time()))
        if transport is not None:
            transport.close()


async def connect_from_client(port: int) -> socket.socket:
    """A socket connected from CLIENT_SOURCE, its port chosen at connect (as unbound ones)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((CLIENT_SOURCE, 0))
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def legit_try(port: int, tally: Tally, seconds: float) -> None:
    tally.tries += 1
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(sock=await connect_from_client(port))
            hello = await reader.readline()
            if not hello.startswith(b'{"event":"hello"'):
                return
            writer.write(b'{"op":"ping"}\n')
            if await reader.readline() != b'{"ok":true}\n':
                return
        tally.greeted += 1
        tally.latencies.append(time.perf_counter() - started)
    except (OSError, TimeoutError):
        pass
    finally:
        if writer is not None:
            writer.close()


async def run(args: argparse.Namespace) -> Tally:
    extra = ("--max-connections-per-address", str(args.per_address))
    with tempfile.TemporaryDirectory() as directory:
        server = Server(SPECS["tcpmq"], Path(directory) / "data", extra)
        await server.start()
        tally = Tally()
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            until = began + args.seconds
            cpu = server.cpu()
            slots = [
                asyncio.create_task(
                    flood_slot(
                        server, tally, began + args.ramp * i / args.sockets, args.period, until
                    )
                )
                for i in range(args.sockets)
            ]
            # The client is a process of its own: in this one its latency
            # would be the flood's event loop's as much as the server's.
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.conn_flood",
                "--client",
                str(server.port),
                "--seconds",
                str(args.seconds - 0.5),
                "--every",
                str(args.every),
                "--timeout",
                str(args.timeout),
                stdout=asyncio.subprocess.PIPE,
            )
            peak_rss = server.rss()
            while loop.time() < until:
                await asyncio.sleep(0.2)
                peak_rss = max(peak_rss, server.rss())
            out, _ = await asyncio.wait_for(client.communicate(), args.timeout + 30)
            seen = json.loads(out)
            tally.tries, tally.greeted, tally.latencies = (
                seen["tries"],
                seen["greeted"],
                seen["latencies"],
            )
            for task in slots:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*slots, return_exceptions=True)
            cpu = server.cpu() - cpu
            alive = server.alive()
            report(args, tally, peak_rss, cpu, alive)
        finally:
            await server.stop()
    return tally


async def client_only(args: argparse.Namespace) -> None:
    """The legitimate client's side: tries for `--seconds`, then one JSON line."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    tries: list[asyncio.Task[None]] = []
    until = loop.time() + args.seconds
    next_try = loop.time()
    while next_try < until:
        await asyncio.sleep(max(0.0, next_try - loop.time()))
        tries.append(asyncio.create_task(legit_try(args.client, tally, args.timeout)))
        next_try += args.every
    await asyncio.wait(tries, timeout=args.timeout + 1)
    print(
        json.dumps({"tries": tally.tries, "greeted": tally.greeted, "latencies": tally.latencies})
    )


def report(args: argparse.Namespace, tally: Tally, peak_rss: int, cpu: float, alive: bool) -> None:
    cap = args.per_address
    print(
        f"flood: {args.sockets} sockets from {FLOOD_SOURCE}, ramp {args.ramp} s, "
        f"re-opened every {args.period} s, {args.seconds} s; per-address cap {cap}"
    )
    print(
        f"  flood connections opened {tally.flood_opened}, greeted {tally.flood_greeted}, "
        f"refused with bye {tally.flood_refused}, failed/timed out {tally.flood_failed}"
    )
    lat = sorted(tally.latencies)
    if lat:
        p50 = statistics.median(lat) * 1000
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000
        latency = (
            f"greeting+ping latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {lat[-1] * 1000:.1f} ms"
        )
    else:
        latency = "no greeting"
    print(f"client from {CLIENT_SOURCE}: greeted {tally.greeted} of {tally.tries} tries; {latency}")
    print(
        f"server: peak RSS {peak_rss / 2**20:.0f} MiB, CPU {cpu:.1f} s, "
        f"{'still up' if alive else 'DIED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--period", type=float, default=9.0)
    parser.add_argument("--every", type=float, default=0.4)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--per-address", type=int, default=Limits().max_connections_per_address)
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        # Any core: not the one the flood generator keeps busy.
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        uvloop.run(client_only(args))
        return
    prepare_process()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
