"""What one message costs the broker in Python, without sockets or a load generator.

Feeds S1's traffic straight into two connections of a real in-process server
(a publisher sending runs of one-message publishes, a consumer pulling and
acking batches) through transports that discard what is written, and prints
the time per message for its publish, pull and ack together. Use it to see
where the time goes (`--profile` prints the functions that take the most).

    python bench/inprocess.py [--fsync never] [--rounds 2000] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from tcpmq.config import ServerConfig, StorageConfig
from tcpmq.server import Server

BATCH = 100  # messages per round: S1's pull size
PAYLOAD = b'"' + b"x" * 98 + b'"'  # 100 bytes as JSON


class DiscardingTransport:
    """Just enough of a transport for a connection: replies are counted, not sent."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 0) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    abort = close


async def measure(fsync: str, rounds: int, profile: cProfile.Profile | None) -> float:
    """Seconds per message (publish + pull + ack)."""
    data_dir = Path(tempfile.mkdtemp(prefix="tcpmq-inprocess-"))
    config = ServerConfig(port=0, data_dir=data_dir, storage=StorageConfig(fsync=fsync))
    server = Server(config, admin_password="bench-inprocess-password")
    await server.start()
    publisher, consumer = server.new_connection(), server.new_connection()
    try:
        token = server.mint_token("admin").encode()
        for connection in (publisher, consumer):
            connection.connection_made(DiscardingTransport())  # type: ignore[arg-type]
            connection.data_received(b'{"op":"auth","token":"%s"}\n' % token)
        publisher.data_received(b'{"op":"channel.create","name":"c"}\n')
        publisher.data_received(b'{"op":"subscribe","channel":"c"}\n')
        publishes = b'{"op":"publish","channel":"c","data":%s}\n' % PAYLOAD * BATCH
        pull = b'{"op":"pull","channel":"c","max":%d}\n' % BATCH
        acks = [
            b'{"op":"ack","channel":"c","ids":[%s]}\n'
            % b",".join(b"%d" % i for i in range(r * BATCH + 1, (r + 1) * BATCH + 1))
            for r in range(rounds)
        ]
        queue = server.backend.broker.channels["c"].queues["admin"]
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        for ack in acks:
            publisher.data_received(publishes)
            consumer.data_received(pull)
            consumer.data_received(ack)
            await asyncio.sleep(0)  # let the loop run the journal's flush
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - started
        if queue.depth or queue.inflight_count:
            raise RuntimeError(f"left over: {queue.depth} ready, {queue.inflight_count} in flight")
        return elapsed / (rounds * BATCH)
    finally:
        for connection in (publisher, consumer):
            connection.close(None)
            connection.connection_lost(None)  # what the transport would report
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsync", choices=["always", "interval", "never"], default="never")
    parser.add_argument("--rounds", type=int, default=2000, help=f"of {BATCH} messages")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    costs = [uvloop.run(measure(args.fsync, args.rounds, profile)) for _ in range(args.runs)]
    median = statistics.median(costs) * 1e6
    low, high = min(costs) * 1e6, max(costs) * 1e6
    print(f"--fsync {args.fsync}: {median:.2f} µs per message ({low:.2f}-{high:.2f})")
    if profile is not None:
        print("(under the profiler, which slows every call)")
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
